'use strict';
/*
 * Status > wgagent against the LuCI stand-in: the recorded S1 answers
 * (tests/data/luci, tests/luci/record_status.py) and edge cases of the data
 * contract (moved, daemon down, no object, ubus errors), as rows (the view's
 * model()) and as the page (#view), and the poll, reconcile and reload.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const { luci, recorded } = require('./helpers.js');

const { UbusStatus } = require('./standin/ubus.js');

async function statusPage(answer, extra = {}) {
	let current = answer;
	const calls = [];
	const objects = extra.objects || {
		wgagent: {
			status: () => { calls.push('status'); if (current instanceof Error) throw current; return current; },
			reconcile: () => { calls.push('reconcile'); return null; },
			reload: () => { calls.push('reload'); return extra.reload || { taken: true, error: null }; }
		}
	};
	const rt = luci({ objects });
	const view = await rt.L.require('view.wgagent.status');
	await view.rendered;
	return { rt, view, calls, set(a) { current = a; }, el: rt.document.getElementById('view') };
}

function texts(nodes) {
	return Array.from(nodes, (n) => n.textContent);
}

function peer(over) {
	return Object.assign({
		public_key: 'qfnCb7qNZoERBEvonmNRQNYPVhkUv/pmtaQiYz2V83A=', short_key: 'qfnCb7qN', description: 'phone',
		endpoint: '203.0.113.100:41289', handshake_age: 4.8, up: true, reason: 'handshake', rx_bytes: 1, tx_bytes: 1,
		allowed_ips: [ '10.0.31.5/32' ], routes: [ '10.0.31.5/32' ], rules: [], state: 'up'
	}, over);
}

function answer(peers, over) {
	return Object.assign({
		interfaces: [ { name: 'wg0', backend: 'uapi', error: null, table: 'main', peers } ],
		conflicts: [], return_paths: [], problems: [], other_owned_routes: [], owned_rules: [],
		daemon: { running: true, pid: 1234, updated: 1000 }
	}, over);
}

test('the recorded op2 answer: phone up with its route, laptop never connected, the return path, the firewall', async () => {
	const st = recorded('status_s1_op2.json');
	const { view } = await statusPage(st);
	const m = view.model(st, st.daemon.updated + 2);
	assert.equal(m.error, null);
	assert.equal(m.daemon.text, 'running (pid %d), updated 2s ago'.format(st.daemon.pid));
	assert.equal(m.interfaces.length, 1);
	const [ phone, laptop ] = m.interfaces[0].rows;
	assert.equal(m.interfaces[0].title, 'Interface wg0 (uapi, table main)');
	assert.deepEqual(phone.cells.slice(0, 2), [ 'phone (%s)'.format(st.interfaces[0].peers[0].short_key), 'up' ]);
	assert.match(phone.cells[2], /^\ds ago$/);
	assert.equal(phone.cells[3], st.interfaces[0].peers[0].endpoint);
	assert.deepEqual(phone.cells[4], [ '10.0.31.5/32' ]);
	assert.deepEqual(phone.cells[5], [ '-' ]);
	assert.equal(laptop.state, 'down');
	assert.deepEqual(laptop.cells.slice(1, 5), [ 'down: no handshake yet', 'never', '-', [ '-' ] ]);
	assert.deepEqual(m.returnPaths[0].cells.slice(0, 4), [ 'wan', 'wan', 'ok', '100' ]);
	assert.deepEqual(m.returnPaths[0].cells[6], [ 'from 203.0.113.2/32 lookup 100 pref 5010',
		'0.0.0.0/0 via 203.0.113.254 dev wan', '203.0.113.0/24 dev wan' ]);
	assert.equal(m.firewall.head, 'Firewall (ubus-cli)');
	assert.deepEqual(m.firewall.rows.map((r) => r.cells[2]), st.firewall.sections.map(() => 'ok'));
	assert.deepEqual(m.notes, []);
});

test('the recorded op1 answer: the phone that left is idle, with no route', async () => {
	const st = recorded('status_s1_op1.json');
	const { view } = await statusPage(st);
	const row = view.model(st, st.daemon.updated).interfaces[0].rows[0];
	assert.equal(row.state, 'idle');
	assert.equal(row.cells[1], 'idle: no traffic within idle_timeout');
	assert.deepEqual(row.cells[4], [ '-' ]);
});

test('the page shows one table per interface, a row per peer with its state, and no Save/Apply footer', async () => {
	const st = recorded('status_s1_op2.json');
	const { el } = await statusPage(st);
	assert.deepEqual(texts(el.querySelectorAll('h3')), [ 'Interface wg0 (uapi, table main)', 'Return paths', 'Firewall (ubus-cli)' ]);
	const rows = el.querySelectorAll('[data-interface="wg0"] tr[data-state]');
	assert.deepEqual(Array.from(rows, (r) => r.getAttribute('data-state')), [ 'up', 'down' ]);
	assert.deepEqual(texts(el.querySelectorAll('[data-interface="wg0"] th')),
		[ 'Peer', 'State', 'Handshake', 'Endpoint', 'Routes', 'Rules' ]);
	assert.equal(el.querySelectorAll('[data-section="firewall"] tr[data-state="ok"]').length, st.firewall.sections.length);
	assert.equal(el.querySelector('.cbi-page-actions'), null);
	assert.equal(el.querySelector('[data-daemon]').getAttribute('data-daemon'), 'running');
	assert.ok(el.querySelectorAll('button').every((b) => !b.disabled));
});

test('a moved peer says where its route goes now', async () => {
	const st = answer([ peer({ up: false, reason: 'handshake-expired', state: 'moved', routes: [],
		moved: { proto: 'babel', gateway: '10.0.32.2', device: 'wg_s2s' } }) ]);
	const { view, el } = await statusPage(st);
	const row = view.model(st, 1000).interfaces[0].rows[0];
	assert.equal(row.state, 'moved');
	assert.equal(row.cells[1], 'moved: via 10.0.32.2 dev wg_s2s proto babel');
	assert.equal(el.querySelector('tr[data-state="moved"]').textContent.includes('moved: via 10.0.32.2'), true);
	/* a moved peer whose new route has no gateway */
	st.interfaces[0].peers[0].moved = { proto: 'static', gateway: null, device: 'wg_s2s' };
	assert.equal(view.model(st, 1000).interfaces[0].rows[0].cells[1], 'moved: dev wg_s2s proto static');
});

test('daemon not running: said at the top, Reconcile and Reload disabled, the rest still shown', async () => {
	const st = answer([ peer({ up: false, reason: 'handshake-expired', state: 'down', routes: [] }) ],
		{ daemon: { running: false, pid: null, updated: 900 } });
	const { el, view } = await statusPage(st);
	const top = el.querySelector('[data-daemon]');
	assert.equal(top.getAttribute('data-daemon'), 'stopped');
	assert.ok(top.classList.contains('alert-message'));
	assert.ok(top.textContent.includes('daemon not running'));
	assert.ok(el.querySelectorAll('button').every((b) => b.disabled));
	assert.equal(view.model(st, 1000).interfaces[0].rows[0].cells[1], 'down: handshake expired');
});

test('no wgagent object on ubus: the page says wgagent does not answer, and why', async () => {
	const { el } = await statusPage(null, { objects: {} });
	const alert = el.querySelector('.alert-message');
	assert.ok(alert.textContent.includes('wgagent does not answer on ubus'));
	assert.ok(alert.textContent.includes('Object not found'));
	assert.equal(el.querySelectorAll('table').length, 0);
});

test('a ubus error status from the object is named, not shown as data', async () => {
	const { el } = await statusPage(new UbusStatus(7));
	assert.ok(el.querySelector('.alert-message').textContent.includes('Request timeout'));
});

test('the CLI JSON (no state, no daemon) still reads: up/idle/down from up and reason', async () => {
	const st = answer([ peer({ state: undefined }), peer({ state: undefined, up: false, reason: 'idle' }),
		peer({ state: undefined, up: false, reason: 'no-handshake', handshake_age: null }) ]);
	delete st.daemon;
	const { view, el } = await statusPage(st);
	assert.deepEqual(view.model(st, 0).interfaces[0].rows.map((r) => r.state), [ 'up', 'idle', 'down' ]);
	assert.ok(el.querySelector('[data-daemon]').textContent.includes('unknown'));
});

test('interface errors, conflicts, problems and leftover routes are shown as warnings', async () => {
	const st = answer([], {
		interfaces: [ { name: 'wg9', backend: null, error: 'interface does not exist', table: 'main', peers: [] } ],
		conflicts: [ { interface: 'wg0', prefix: '10.0.31.5/32', table: 'main', proto: 'static' } ],
		problems: [ 'rule_priority band overlaps' ],
		other_owned_routes: [ '10.9.9.9/32 dev wg0 table 254' ]
	});
	const { el } = await statusPage(st);
	const warnings = texts(el.querySelectorAll('.alert-message'));
	assert.ok(warnings.some((w) => w.includes('interface does not exist')));
	assert.ok(warnings.some((w) => w.includes('10.0.31.5/32 in table main is held by protocol static') &&
		w.includes('route_allowed_ips \'0\'')));
	assert.ok(warnings.some((w) => w.includes('problem: rule_priority band overlaps')));
	assert.ok(warnings.some((w) => w.includes('owned route with no configured peer: 10.9.9.9/32')));
	assert.ok(el.querySelector('[data-interface="wg9"] tr.placeholder').textContent.includes('No peers'));
	assert.ok(texts(el.querySelectorAll('h3')).includes('Interface wg9 (not WireGuard, table main)'));
});

test('the page polls: every 5 s a fresh answer redraws it', async () => {
	const { rt, el, calls, set } = await statusPage(answer([ peer() ]));
	assert.equal(rt.poll.queue.length, 1);
	assert.equal(rt.poll.queue[0].i, 5);
	await rt.poll.queue[0].fn();  /* what poll.add's implicit start ran at once */
	set(answer([ peer({ up: false, reason: 'idle', state: 'idle', routes: [] }) ]));
	const before = calls.length;
	for (let i = 0; i < 5; i++)
		await rt.poll.step();
	assert.equal(calls.length, before + 1, 'one status call per 5 ticks');
	assert.equal(el.querySelector('tr[data-state]').getAttribute('data-state'), 'idle');
	assert.equal(el.querySelectorAll('#wgagent-status').length, 1, 'redrawn in place');
});

test('Reconcile now calls reconcile and redraws; Reload says whether wgagent took the config', async () => {
	const page = await statusPage(answer([ peer() ]), { reload: { taken: false, error: "/etc/config/wgagent: section 'wg0', option 'table', value 'nosuch': unknown table name" } });
	const buttons = page.el.querySelectorAll('button');
	await buttons.find((b) => b.textContent == 'Reconcile now').click()[0];
	assert.ok(page.calls.includes('reconcile'));
	assert.equal(page.calls[page.calls.length - 1], 'status');
	await page.el.querySelectorAll('button').find((b) => b.textContent == 'Reload configuration').click()[0];
	const n = page.rt.notifications.pop();
	assert.ok(n.text.includes('wgagent kept its configuration') && n.text.includes('unknown table name'), n.text);
	assert.deepEqual(n.classes, [ 'warning' ]);

	const ok = await statusPage(answer([ peer() ]));
	await ok.el.querySelectorAll('button').find((b) => b.textContent == 'Reload configuration').click()[0];
	assert.ok(ok.rt.notifications.pop().text.includes('took the new configuration'));
});

test('handshake ages read as the two largest units', async () => {
	const { view } = await statusPage(answer([]));
	const cases = [ [ null, null ], [ 0, '0s' ], [ 4.8, '4s' ], [ 59.9, '59s' ], [ 60, '1m' ], [ 185, '3m 5s' ],
		[ 3600, '1h' ], [ 7380, '2h 3m' ], [ 86400, '1d' ], [ 360000, '4d 4h' ], [ -3, '0s' ] ];
	for (const [ secs, text ] of cases)
		assert.equal(view.formatAge(secs), text, String(secs));
});
