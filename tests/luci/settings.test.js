'use strict';
/*
 * Services > wgagent against the LuCI stand-in, loaded with the config op2 ran
 * in the S1 recording (its `uci get` answer, tests/data/luci/uci_get_s1_op2.json):
 * what each user action sends to rpcd, and which values Save refuses. Whether the
 * result loads in wgagent, and whether each field refuses exactly what
 * config.py refuses, is tests/test_luci.py's (it has config.py).
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const { luci, recorded, uciSections, readJSON, ACL_FILE } = require('./helpers.js');

const KEY = 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=';

const FILES = {
	'/etc/iproute2/rt_tables': '#\n# reserved values\n#\n255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n#\n# local\n#\n100 wan\n',
	'/etc/iproute2/rt_tables.d/s2s.conf': '200 via_s2s\n',
	'/usr/share/iproute2/rt_tables.d/vpn.conf': '0x12c vpn\n'
};

async function settingsPage(opts = {}) {
	const values = recorded('uci_get_s1_op2.json').values;
	const rt = luci(Object.assign({ configs: { wgagent: uciSections(values) }, files: FILES }, opts));
	const view = await rt.L.require('view.wgagent.settings');
	await view.rendered;
	const map = rt.dom.findClassInstance(rt.document.querySelector('.cbi-map'));
	const section = (type) => map.children.find((s) => s.sectiontype == type);
	return { rt, view, map, section, calls: rt.ubus.objects.uci.calls };
}

/* a grid's Add or Edit: its modal open, these fields set (the test saves it) */
async function inModal(page, action, type, sid, values) {
	const grid = page.section(type);
	await page.rt.user[action](grid, sid);
	for (const [ k, v ] of Object.entries(values))
		page.rt.user.set(grid.modal.map, sid, k, v);
	return grid;
}

const addInModal = (page, ...args) => inModal(page, 'add', ...args);
const editInModal = (page, ...args) => inModal(page, 'edit', ...args);

test('the page maps every section of the config into its own section of the form', async () => {
	const { section } = await settingsPage();
	const ids = (type) => section(type).cfgsections();
	assert.deepEqual(ids('agent'), [ 'main' ]);
	assert.deepEqual(ids('interface'), [ 'wg0' ]);
	assert.deepEqual(ids('peer'), [ 'phone', 'laptop' ]);
	assert.deepEqual(ids('return_path'), [ 'wan' ]);
	assert.deepEqual(ids('zone'), [ 'pool', 's2s' ]);
	assert.deepEqual(ids('nat'), [ 'pool_via_s2s' ]);
});

test('saving the agent section sends the changed option, and what LuCI writes of its own', async () => {
	const page = await settingsPage();
	page.rt.user.set(page.map, 'main', 'poll_interval', '1');
	page.rt.user.set(page.map, 'main', 'keep_routes_on_stop', true);
	await page.map.save(null, true);
	/* a ListValue always writes its choice (log_level 'info', absent before); a
	 * Flag at its default is removed (enabled '1' is not written) */
	assert.deepEqual(page.calls, [ [ 'set', { config: 'wgagent', section: 'main',
		values: { poll_interval: '1', log_level: 'info', keep_routes_on_stop: '1' } } ] ]);
});

test('poll_interval and handshake_timeout: > 0 and within their maximum, LuCI decimals only', async () => {
	const page = await settingsPage();
	const cases = { poll_interval: [ [ '0.5', true ], [ '3600', true ], [ '0', false ], [ '0.0', false ], [ '-1', false ],
		[ '3600.5', false ], [ '1e3', false ], [ 'abc', false ], [ '', true ] ],
		handshake_timeout: [ [ '180', true ], [ '86400', true ], [ '86401', false ], [ '0', false ] ] };
	for (const [ opt, list ] of Object.entries(cases))
		for (const [ v, ok ] of list) {
			const w = page.rt.user.set(page.map, 'main', opt, v);
			assert.equal(w.isValid(), ok, `${opt} ${v}: ${w.getValidationError()}`);
		}
});

test('a new peer: Add opens its form; Save sends one named add with the values given', async () => {
	const page = await settingsPage();
	const grid = await addInModal(page, 'peer', 'tablet', { interface: 'wg0', public_key: KEY, description: 'tablet' });
	await page.rt.user.saveModal(grid);
	assert.deepEqual(page.calls, [ [ 'add', { config: 'wgagent', type: 'peer', name: 'tablet',
		values: { interface: 'wg0', public_key: KEY, description: 'tablet' } } ] ]);
	assert.deepEqual(page.section('peer').cfgsections(), [ 'phone', 'laptop', 'tablet' ]);
});

test('a peer\'s key must be one wg prints, its interface a configured one, and not the same peer twice', async () => {
	const page = await settingsPage();
	const phoneKey = recorded('uci_get_s1_op2.json').values.phone.public_key;
	const grid = await addInModal(page, 'peer', 'tablet', { interface: 'wg0' });
	const m = grid.modal.map;
	const key = (v) => page.rt.user.set(m, 'tablet', 'public_key', v);
	const padded = KEY.substr(0, 42) + 'h=';  /* 'h' is 'g' with a padding bit set */
	assert.match((key(padded).isValid(), key(padded).getValidationError()), /padding bits of character 43 \("h"\) are set.*"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="/);
	assert.equal(key('tooshort=').isValid(), false);
	assert.equal(key(phoneKey).isValid(), false);
	assert.match(key(phoneKey).getValidationError(), /already configured in section "phone"/);
	key(KEY);
	assert.equal(page.rt.user.set(m, 'tablet', 'interface', 'wg7').isValid(), false);
	await assert.rejects(page.rt.user.saveModal(grid), /Interface/);
	assert.deepEqual(page.calls, []);
});

test('a return path needs exactly one of device or network, and at most one gateway per family', async () => {
	const page = await settingsPage();
	let grid = await editInModal(page, 'return_path', 'wan', { network: 'wan' });
	await assert.rejects(page.rt.user.saveModal(grid), /set exactly one of "device" or "network"/);
	grid = await editInModal(page, 'return_path', 'wan', { gateway: [ '203.0.113.254', '203.0.113.253' ] });
	await assert.rejects(page.rt.user.saveModal(grid), /at most one gateway per address family/);
	grid = await editInModal(page, 'return_path', 'wan', { gateway: [ '203.0.113.254', '2001:db8::1' ], device: 'wan' });
	await page.rt.user.saveModal(grid);
	assert.deepEqual(page.calls, [ [ 'set', { config: 'wgagent', section: 'wan', values: { gateway: [ '203.0.113.254', '2001:db8::1' ] } } ] ]);
});

test('nat: snat_ip only for SNAT (hidden, then removed, otherwise), required then, of the family', async () => {
	const page = await settingsPage();
	let grid = await editInModal(page, 'nat', 'pool_via_s2s', { target: 'SNAT' });
	await assert.rejects(page.rt.user.saveModal(grid), /"SNAT address" contains an invalid input value. Expecting: non-empty value/);
	grid = await editInModal(page, 'nat', 'pool_via_s2s', { target: 'SNAT', snat_ip: '2001:db8::1' });
	await assert.rejects(page.rt.user.saveModal(grid), /not an ipv4 address/);
	grid = await editInModal(page, 'nat', 'pool_via_s2s', { target: 'SNAT', snat_ip: '10.0.32.1' });
	await page.rt.user.saveModal(grid);
	assert.deepEqual(page.calls.pop(), [ 'set', { config: 'wgagent', section: 'pool_via_s2s',
		values: { target: 'SNAT', snat_ip: '10.0.32.1', family: 'ipv4' } } ]);
	grid = await editInModal(page, 'nat', 'pool_via_s2s', {});
	assert.equal(grid.modal.map.lookupOption('snat_ip', 'pool_via_s2s')[0].isActive('pool_via_s2s'), true);
	page.rt.user.set(grid.modal.map, 'pool_via_s2s', 'target', 'MASQUERADE');
	assert.equal(grid.modal.map.lookupOption('snat_ip', 'pool_via_s2s')[0].isActive('pool_via_s2s'), false);
	await page.rt.user.saveModal(grid);
	assert.deepEqual(page.calls.slice(-2), [
		[ 'delete', { config: 'wgagent', section: 'pool_via_s2s', options: [ 'snat_ip' ] } ],
		[ 'set', { config: 'wgagent', section: 'pool_via_s2s', values: { target: 'MASQUERADE' } } ] ]);
	grid = await editInModal(page, 'nat', 'pool_via_s2s', { dest: 'wan' });
	await assert.rejects(page.rt.user.saveModal(grid), /set exactly one of "device" or "dest"/);
});

test('zones: no forwarding to itself, no two forwardings that make one firewall section', async () => {
	const page = await settingsPage();
	let grid = await editInModal(page, 'zone', 's2s', { forward_to: [ 'lan', 's2s' ] });
	await assert.rejects(page.rt.user.saveModal(grid), /a zone cannot forward to itself/);
	grid = await addInModal(page, 'zone', 'p', { forward_to: [ 'q_to_r' ] });
	await page.rt.user.saveModal(grid);
	grid = await addInModal(page, 'zone', 'p_to_q', { forward_to: [ 'r' ] });
	await assert.rejects(page.rt.user.saveModal(grid), /p -> q_to_r .* p_to_q -> r|p_to_q -> r .* p -> q_to_r/);
});

test('an interface is named after the kernel interface, its tables from rt_tables and rt_tables.d', async () => {
	const page = await settingsPage();
	let grid = await addInModal(page, 'interface', 'averyverylongname', {});
	await assert.rejects(page.rt.user.saveModal(grid), /not a valid interface name/);
	grid = await editInModal(page, 'interface', 'wg0', {});
	const table = (v) => page.rt.user.set(grid.modal.map, 'wg0', 'table', v);
	for (const [ v, ok ] of [ [ 'main', true ], [ 'wan', true ], [ 'via_s2s', true ], [ 'vpn', true ], [ '100', true ],
		[ '4294967295', true ], [ 'nosuch', false ], [ '0', false ], [ '4294967296', false ], [ 'unspec', false ] ])
		assert.equal(table(v).isValid(), ok, `table ${v}: ${table(v).getValidationError()}`);
	const choices = grid.modal.map.lookupOption('table', 'wg0')[0].keylist;
	assert.deepEqual(choices, [ 'unspec', 'wan', 'via_s2s', 'default', 'main', 'local', 'vpn' ]);
});

test('a new section cannot take the name of a section of another type', async () => {
	const page = await settingsPage();
	const grid = await addInModal(page, 'zone', 'wg0', {});
	await assert.rejects(page.rt.user.saveModal(grid), /the name "wg0" is already the interface section's/);
	assert.deepEqual(page.calls, []);
});

test('Save & Apply saves, then applies with rollback and confirms', async () => {
	const page = await settingsPage();
	page.rt.user.set(page.map, 'main', 'rule_priority', '6000');
	await page.view.handleSaveApply(null);
	assert.deepEqual(page.calls.map((c) => c[0]), [ 'set' ]);
	assert.deepEqual(page.rt.ubus.objects.uci.commits, [ [ 'apply', { timeout: 90, rollback: true } ], [ 'confirm', {} ] ]);
});

test('without uci write in the session the form is read-only', async () => {
	const acl = readJSON(ACL_FILE);
	delete acl['luci-app-wgagent'].write.uci;
	const page = await settingsPage({ acl: [ acl ] });
	assert.equal(page.map.readonly, true);
	assert.throws(() => page.rt.user.set(page.map, 'main', 'poll_interval', '1'), /read-only/);
});
