'use strict';
/*
 * luci-app-wgagent's ACL and menu against what the pages do: both views run their
 * usual actions in a session that holds only luci-base's grants and the app's
 * ACL (the stand-in's rpcd checks each call as rpcd and uhttpd do); nothing may be
 * refused, and every grant of the ACL must have been needed.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { luci, recorded, uciSections, readJSON, ACL_FILE, MENU_FILE, RESOURCES } = require('./helpers.js');
const { grantsOf } = require('./standin/ubus.js');

const GROUP = 'luci-app-wgagent';

/* a file in every rt_tables place, so each of those grants is exercised */
const FILES = {
	'/etc/iproute2/rt_tables': '254 main\n100 wan\n',
	'/etc/iproute2/rt_tables.d/a.conf': '200 via_s2s\n',
	'/usr/share/iproute2/rt_tables': '253 default\n',
	'/usr/share/iproute2/rt_tables.d/b.conf': '300 vpn\n'
};

async function usePages() {
	const logs = [];
	const status = recorded('status_s1_op2.json');
	let rt = luci({ objects: { wgagent: { status: () => status, reconcile: () => null, reload: () => ({ taken: true, error: null }) } } });
	let view = await rt.L.require('view.wgagent.status');
	await view.rendered;
	await rt.poll.step();
	for (const label of [ 'Reconcile now', 'Reload configuration' ])
		await rt.document.querySelectorAll('button').find((b) => b.textContent == label).click()[0];
	logs.push(...rt.ubus.log);

	rt = luci({ configs: { wgagent: uciSections(recorded('uci_get_s1_op2.json').values) }, files: FILES });
	view = await rt.L.require('view.wgagent.settings');
	await view.rendered;
	const map = rt.dom.findClassInstance(rt.document.querySelector('.cbi-map'));
	rt.user.set(map, 'main', 'poll_interval', '1');
	await view.handleSaveApply(null);
	logs.push(...rt.ubus.log);
	return logs;
}

test('the pages are refused nothing and need every grant of luci-app-wgagent.json', async () => {
	const logs = await usePages();
	assert.deepEqual(logs.filter((l) => !l.allowed).map((l) => [ l.scope, l.object, l.func ]), []);
	const key = (g) => g.slice(0, 3).join(' ');
	const used = new Set(logs.filter((l) => l.grant && l.grant[3] == GROUP).map((l) => key(l.grant)));
	const granted = grantsOf([ readJSON(ACL_FILE) ]).map(key);
	assert.deepEqual([ ...used ].sort(), [ ...new Set(granted) ].sort());
});

test('the status page reads with the read part alone; only Reconcile and Reload need the write part', async () => {
	const acl = readJSON(ACL_FILE);
	const write = acl[GROUP].write;
	assert.deepEqual(write.ubus, { wgagent: [ 'reconcile', 'reload' ] });
	assert.deepEqual(acl[GROUP].read.ubus, { wgagent: [ 'status' ] });
	assert.deepEqual(write.uci, [ 'wgagent' ]);
	assert.deepEqual(acl[GROUP].read.uci, [ 'wgagent' ]);
});

test('the menu entries open the two views, under Status and Services, behind the ACL', () => {
	const menu = readJSON(MENU_FILE);
	assert.deepEqual(Object.keys(menu).sort(), [ 'admin/services/wgagent', 'admin/status/wgagent' ]);
	assert.equal(menu['admin/status/wgagent'].action.path, 'wgagent/status');
	assert.equal(menu['admin/services/wgagent'].action.path, 'wgagent/settings');
	const acl = readJSON(ACL_FILE);
	for (const node of Object.values(menu)) {
		assert.equal(node.action.type, 'view');
		assert.ok(fs.existsSync(path.join(RESOURCES, 'view', node.action.path + '.js')), node.action.path);
		assert.deepEqual(node.depends.acl, [ GROUP ]);
		assert.ok(acl[node.depends.acl[0]]);
		assert.deepEqual(node.depends.uci, { wgagent: true });
	}
});
