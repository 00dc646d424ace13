'use strict';
'require view';
'require dom';
'require poll';
'require rpc';
'require ui';

/*
 * Status > wgagent: what `ubus call wgagent status` answers, the same document as
 * `wgagent status --json` plus the daemon's own "daemon" object and each peer's
 * "state" (up | down | idle | moved, "moved" with where its route now goes).
 * Redrawn from a fresh answer every POLL seconds; it keeps no state of its own.
 */

var POLL = 5;

var callStatus = rpc.declare({ object: 'wgagent', method: 'status' });
var callReconcile = rpc.declare({ object: 'wgagent', method: 'reconcile' });
var callReload = rpc.declare({ object: 'wgagent', method: 'reload' });

/* the answer, or {error} when there is none: the call itself fails when no
 * object answers (the daemon serves it, so it is down) or the ACL refuses it;
 * without `reject`, rpc.js resolves a ubus error status as its number */
function fetchStatus() {
	return callStatus().then(function(reply) {
		if (typeof(reply) == 'number')
			return { error: rpc.getStatusText(reply) };
		if (!L.isObject(reply))
			return { error: _('no answer') };
		return reply;
	}, function(err) {
		return { error: err.message || String(err) };
	});
}

/* a peer's state; an answer without "state" (the CLI's JSON) gives up/idle/down */
function peerState(peer) {
	if (peer.state)
		return peer.state;
	if (peer.up)
		return 'up';
	return (peer.reason == 'idle') ? 'idle' : 'down';
}

/* policy.py's reasons, in words */
function reasonText(reason) {
	switch (reason) {
	case 'handshake': return _('handshake');
	case 'no-handshake': return _('no handshake yet');
	case 'handshake-expired': return _('handshake expired');
	case 'idle': return _('no traffic within idle_timeout');
	default: return reason || '';
	}
}

/* seconds as the two largest units: 42s, 3m 5s, 2h 3m, 4d 2h */
function formatAge(seconds) {
	if (seconds == null)
		return null;

	var s = Math.max(0, Math.floor(seconds)),
	    units = [ [ 86400, 'd' ], [ 3600, 'h' ], [ 60, 'm' ], [ 1, 's' ] ];

	for (var i = 0; i < units.length - 1; i++) {
		if (s >= units[i][0]) {
			var major = Math.floor(s / units[i][0]),
			    minor = Math.floor((s % units[i][0]) / units[i + 1][0]);
			return major + units[i][1] + (minor ? ' ' + minor + units[i + 1][1] : '');
		}
	}

	return s + 's';
}

function stateText(peer) {
	var state = peerState(peer), m = peer.moved;

	switch (state) {
	case 'up':
		return _('up');
	case 'moved':
		return _('moved: %s').format([
			m && m.gateway ? _('via %s').format(m.gateway) : null,
			m && m.device ? _('dev %s').format(m.device) : null,
			m && m.proto ? _('proto %s').format(m.proto) : null
		].filter(function(x) { return x; }).join(' ') || _('elsewhere'));
	case 'idle':
		return _('idle: %s').format(reasonText('idle'));
	default:
		return _('down: %s').format(reasonText(peer.reason));
	}
}

function peerName(peer) {
	return peer.description ? '%s (%s)'.format(peer.description, peer.short_key) : peer.short_key;
}

/*
 * The answer as the page shows it, as plain data (the tests check it, render()
 * only turns it into markup). Cells are strings, or arrays of strings for lines.
 */
function model(st, now) {
	var out = { error: null, daemon: null, interfaces: [], returnPaths: [], firewall: null, notes: [] };

	if (!st || st.error) {
		out.error = (st && st.error) || _('no answer');
		return out;
	}

	var d = st.daemon;
	if (d) {
		out.daemon = {
			running: !!d.running,
			text: d.running
				? _('running (pid %s), updated %s ago').format(d.pid != null ? d.pid : '?',
					formatAge(d.updated != null ? now - d.updated : null) || '?')
				: _('daemon not running')
		};
	}

	(st.interfaces || []).forEach(function(iface) {
		out.interfaces.push({
			name: iface.name,
			title: _('Interface %s (%s, table %s)').format(iface.name,
				iface.backend || _('not WireGuard'), iface.table),
			error: iface.error || null,
			rows: (iface.peers || []).map(function(p) {
				var age = formatAge(p.handshake_age);
				return {
					key: p.public_key,
					state: peerState(p),
					cells: [
						peerName(p),
						stateText(p),
						age ? _('%s ago').format(age) : _('never'),
						p.endpoint || '-',
						(p.routes && p.routes.length) ? p.routes : [ '-' ],
						(p.rules && p.rules.length) ? p.rules : [ '-' ]
					]
				};
			})
		});
	});

	(st.return_paths || []).forEach(function(rp) {
		out.returnPaths.push({
			name: rp.name,
			present: !!rp.present,
			cells: [
				rp.name,
				rp.device || '-',
				rp.present ? _('ok') : _('down: %s').format(rp.error || _('device missing')),
				rp.table,
				(rp.addresses && rp.addresses.length) ? rp.addresses : [ '-' ],
				(rp.gateways && rp.gateways.length) ? rp.gateways : [ '-' ],
				[].concat(rp.rules || [], rp.routes || []).length ? [].concat(rp.rules || [], rp.routes || []) : [ '-' ]
			]
		});
	});

	if (st.firewall) {
		var fw = st.firewall;
		out.firewall = {
			head: fw.error
				? _('Firewall (%s): %s').format(fw.transport || _('unavailable'), fw.error)
				: _('Firewall (%s)').format(fw.transport || _('unavailable')),
			rows: (fw.sections || []).map(function(s) {
				return { state: s.state, cells: [ s.name, s.type, s.state ] };
			}),
			warnings: fw.warnings || []
		};
	}

	(st.problems || []).forEach(function(p) {
		out.notes.push(_('problem: %s').format(p));
	});
	(st.conflicts || []).forEach(function(c) {
		out.notes.push(_('conflict: %s in table %s is held by protocol %s (%s): set option route_allowed_ips \'0\' on the wireguard_%s peers').format(
			c.prefix, c.table, c.proto, c.interface, c.interface));
	});
	(st.other_owned_routes || []).forEach(function(r) {
		out.notes.push(_('owned route with no configured peer: %s').format(r));
	});

	return out;
}

function cell(value) {
	if (Array.isArray(value)) {
		var lines = [];
		value.forEach(function(line, i) {
			if (i)
				lines.push(E('br'));
			lines.push(line);
		});
		return E('td', { 'class': 'td' }, lines);
	}
	return E('td', { 'class': 'td' }, [ value ]);
}

function table(titles, rows, placeholder) {
	var t = E('table', { 'class': 'table' }, [
		E('tr', { 'class': 'tr table-titles' }, titles.map(function(title) {
			return E('th', { 'class': 'th' }, [ title ]);
		}))
	]);

	rows.forEach(function(row) {
		t.appendChild(E('tr', {
			'class': 'tr',
			'data-state': row.state || (row.present === false ? 'down' : null)
		}, row.cells.map(cell)));
	});

	if (!rows.length)
		t.appendChild(E('tr', { 'class': 'tr placeholder' }, [
			E('td', { 'class': 'td' }, [ E('em', [ placeholder ]) ])
		]));

	return t;
}

return view.extend({
	/* for the tests */
	model: model,
	peerState: peerState,
	formatAge: formatAge,

	load: function() {
		return fetchStatus();
	},

	now: function() {
		return Date.now() / 1000;
	},

	handleReconcile: function(ev) {
		return callReconcile().then(L.bind(this.refresh, this), function(err) {
			ui.addNotification(null, E('p', [ _('Reconcile failed: %s').format(err.message) ]), 'error');
		});
	},

	handleReload: function(ev) {
		return callReload().then(L.bind(function(res) {
			if (L.isObject(res) && res.taken)
				ui.addNotification(null, E('p', [ _('wgagent took the new configuration.') ]), 'info');
			else
				ui.addNotification(null, E('p', [ _('wgagent kept its configuration: %s').format(
					(L.isObject(res) && res.error) || rpc.getStatusText(res)) ]), 'warning');
			return this.refresh();
		}, this), function(err) {
			ui.addNotification(null, E('p', [ _('Reload failed: %s').format(err.message) ]), 'error');
		});
	},

	refresh: function() {
		return fetchStatus().then(L.bind(function(st) {
			dom.content(this.container, this.renderStatus(st));
		}, this));
	},

	renderStatus: function(st) {
		var m = model(st, this.now()), nodes = [];

		if (m.error) {
			nodes.push(E('div', { 'class': 'alert-message warning' }, [
				E('p', [ _('wgagent does not answer on ubus: %s').format(m.error) ]),
				E('p', [ _('Is the daemon running? /etc/init.d/wgagent start') ])
			]));
			return nodes;
		}

		var running = !m.daemon || m.daemon.running;
		nodes.push(E('div', { 'class': running ? 'cbi-section' : 'alert-message warning', 'data-daemon': running ? 'running' : 'stopped' }, [
			E('p', [ E('strong', [ _('Daemon') + ': ' ]), m.daemon ? m.daemon.text : _('unknown') ]),
			E('div', { 'class': 'right' }, [
				E('button', {
					'class': 'cbi-button cbi-button-action',
					'click': ui.createHandlerFn(this, 'handleReconcile'),
					'disabled': running ? null : true
				}, [ _('Reconcile now') ]), ' ',
				E('button', {
					'class': 'cbi-button cbi-button-apply',
					'click': ui.createHandlerFn(this, 'handleReload'),
					'disabled': running ? null : true
				}, [ _('Reload configuration') ])
			])
		]));

		m.notes.forEach(function(note) {
			nodes.push(E('div', { 'class': 'alert-message warning' }, [ note ]));
		});

		m.interfaces.forEach(function(iface) {
			nodes.push(E('div', { 'class': 'cbi-section', 'data-interface': iface.name }, [
				E('h3', [ iface.title ]),
				iface.error ? E('div', { 'class': 'alert-message warning' }, [ iface.error ]) : '',
				table([ _('Peer'), _('State'), _('Handshake'), _('Endpoint'), _('Routes'), _('Rules') ],
					iface.rows, _('No peers'))
			]));
		});

		if (!m.interfaces.length)
			nodes.push(E('div', { 'class': 'cbi-section' }, [
				E('em', [ _('No interface configured: add one in Services > wgagent.') ])
			]));

		if (m.returnPaths.length)
			nodes.push(E('div', { 'class': 'cbi-section', 'data-section': 'return_paths' }, [
				E('h3', [ _('Return paths') ]),
				table([ _('Name'), _('Device'), _('State'), _('Table'), _('Addresses'), _('Gateways'), _('Rules and routes') ],
					m.returnPaths, _('No return paths'))
			]));

		if (m.firewall)
			nodes.push(E('div', { 'class': 'cbi-section', 'data-section': 'firewall' }, [
				E('h3', [ m.firewall.head ]),
				table([ _('Section'), _('Type'), _('State') ], m.firewall.rows, _('No firewall sections')),
				m.firewall.warnings.length
					? E('ul', {}, m.firewall.warnings.map(function(w) { return E('li', [ w ]); })) : ''
			]));

		return nodes;
	},

	render: function(st) {
		this.container = E('div', { 'id': 'wgagent-status' }, this.renderStatus(st));
		poll.add(L.bind(this.refresh, this), POLL);

		return E('div', {}, [
			E('h2', [ _('wgagent') ]),
			E('div', { 'class': 'cbi-map-descr' }, [
				_('WireGuard peers and the routes, rules and firewall sections wgagent keeps for the connected ones.')
			]),
			this.container
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
