'use strict';
/*
 * Shared by the node tests: a LuCI stand-in runtime (standin/) on a minidom page
 * (#maincontent > #view, as LuCI's theme has it) that loads the package's files
 * from openwrt-package/luci-app-wgagent/htdocs/luci-static/resources, with
 * luci-app-wgagent's ACL as the session's only grant beyond luci-base's.
 */

const fs = require('node:fs');
const path = require('node:path');
const { Document } = require('./standin/minidom.js');
const { createLuCI } = require('./standin/index.js');

const ROOT = path.resolve(__dirname, '..', '..');
const PKG = path.join(ROOT, 'openwrt-package', 'luci-app-wgagent');
const RESOURCES = path.join(PKG, 'htdocs', 'luci-static', 'resources');
const ACL_FILE = path.join(PKG, 'root', 'usr', 'share', 'rpcd', 'acl.d', 'luci-app-wgagent.json');
const MENU_FILE = path.join(PKG, 'root', 'usr', 'share', 'luci', 'menu.d', 'luci-app-wgagent.json');
const DATA = path.join(ROOT, 'tests', 'data', 'luci');

function readJSON(p) {
	return JSON.parse(fs.readFileSync(p, 'utf8'));
}

function page() {
	const document = new Document();
	const mc = document.createElement('div');
	mc.setAttribute('id', 'maincontent');
	const view = document.createElement('div');
	view.setAttribute('id', 'view');
	mc.appendChild(view);
	document.body.appendChild(mc);
	return { document, window: { document } };
}

/* opts: objects (extra ubus objects), configs (uci), files (rpcd file), acl */
function luci(opts = {}) {
	const { document, window } = page();
	return createLuCI(Object.assign({
		window, document, timers: false,
		acl: [ readJSON(ACL_FILE) ],
		readResource: (p) => fs.promises.readFile(path.join(RESOURCES, p), 'utf8')
	}, opts));
}

/* a `uci get` answer's sections as the stand-in's uci object keeps them */
function uciSections(values) {
	return Object.keys(values).sort((a, b) => values[a]['.index'] - values[b]['.index']).map((k) => {
		const s = Object.assign({}, values[k]);
		delete s['.index'];
		return s;
	});
}

function recorded(name) {
	return readJSON(path.join(DATA, name));
}

module.exports = { ROOT, PKG, RESOURCES, ACL_FILE, MENU_FILE, DATA, readJSON, luci, uciSections, recorded };
