'use strict';
'require view';
'require form';
'require fs';
'require uci';
'require wgagent.validate as wgv';

/*
 * Services > wgagent: /etc/config/wgagent, every section type and option that
 * wgagent/config.py reads (SCHEMA), with its default and its check. A value the
 * form lets through loads in wgagent; the checks that span options or sections
 * (exactly one of device/network, one gateway per family, a peer's interface, the
 * same key twice, a zone forwarding to itself or two forwardings with one section
 * name) are in the options' validate functions, so Save refuses what wgagent would
 * refuse at its next reload (which keeps its running config then, and says so in
 * the log and in Status > wgagent's Reload).
 *
 * Save & Apply commits through rpcd, whose config.change event makes procd run
 * /etc/init.d/wgagent reload: nothing to call here.
 */

var CONFIG = 'wgagent';
var USUAL_ZONES = [ 'lan', 'wan' ];  /* config.USUAL_ZONES */
var RULE_PRIORITY_MAX = 32765 - 1000;  /* config.RULE_PRIORITY_MAX */

/* config.read_rt_tables: each file of wgv.RT_TABLES, then its .d/*.conf in name order */
function readRtTables() {
	return Promise.all(wgv.RT_TABLES.map(function(path) {
		return Promise.all([
			L.resolveDefault(fs.lines(path), []),
			L.resolveDefault(fs.list(path + '.d'), []).then(function(entries) {
				var names = entries.map(function(e) { return e.name; })
					.filter(function(n) { return /\.conf$/.test(n); }).sort();
				return Promise.all(names.map(function(n) {
					return L.resolveDefault(fs.lines(path + '.d/' + n), []);
				}));
			})
		]).then(function(res) {
			return [ res[0] ].concat(res[1]);
		});
	})).then(function(groups) {
		return wgv.parseRtTables([].concat.apply([], groups));
	});
}

function sectionNames(type) {
	return uci.sections(CONFIG, type).map(function(s) { return s['.name']; });
}

/* UCI section names are one namespace for every type (wgagent refuses a file
 * where a section's name is reused: "overwrites a prior section"), and rpcd's add
 * with a name that exists silently retypes that section: so a new section must
 * not take the name of one of another type (checked on a field each type always
 * shows, since the add button itself checks only 'uciname') */
function uniqueName(section_id, type) {
	var other = uci.sections(CONFIG).filter(function(s) {
		return s['.name'] == section_id && s['.type'] != type;
	})[0];
	return other ? _('the name "%s" is already the %s section\'s').format(section_id, other['.type']) : true;
}

/* a zone reference: wgagent's zones and lan/wan are known; any other name must be
 * a zone of /etc/config/firewall, which wgagent checks when it writes */
function zoneChoices(o, except) {
	sectionNames('zone').concat(USUAL_ZONES).forEach(function(z) {
		if (z != except)
			o.value(z);
	});
}

/* the two options of which exactly one must be set (config._nat, _return_path) */
function exactlyOne(section, section_id, a, b) {
	var va = section.formvalue(section_id, a), vb = section.formvalue(section_id, b);
	if (!!va == !!vb)
		return _('set exactly one of "%s" or "%s"').format(a, b);
	return true;
}

/* the first check that fails, or true */
function first() {
	for (var i = 0; i < arguments.length; i++) {
		var r = (typeof(arguments[i]) == 'function') ? arguments[i]() : arguments[i];
		if (r !== true)
			return r;
	}
	return true;
}

/* a grid of named sections (the name is wgagent's label), added and removed there */
function gridSection(m, type, title, description) {
	var s = m.section(form.GridSection, type, title, description);
	s.addremove = true;
	s.anonymous = false;
	s.nodescriptions = true;
	return s;
}

/* a kernel device, or else the `partner` option (a netifd name or a zone), never both */
function deviceOrOption(s, partner, partnerTitle, partnerDescription, deviceDescription) {
	var o = s.option(form.Value, partner, partnerTitle, partnerDescription);
	o.datatype = 'uciname';
	o.validate = function(section_id, value) {
		return exactlyOne(this.section, section_id, 'device', partner);
	};
	var d = s.option(form.Value, 'device', _('Device'), deviceDescription);
	d.datatype = 'netdevname';
	d.validate = function(section_id, value) {
		return first((value === '') ? true : wgv.ifname(value),
			L.bind(exactlyOne, null, this.section, section_id, 'device', partner));
	};
	return [ o, d ];
}

function tableOption(s, name, title, description, tables) {
	var o = s.option(form.Value, name, title, description);
	Object.keys(tables).sort(function(a, b) { return tables[a] - tables[b]; }).forEach(function(t) {
		o.value(t, '%s (%d)'.format(t, tables[t]));
	});
	o.validate = function(section_id, value) {
		return (value === '') ? true : wgv.table(value, tables);
	};
	return o;
}

function secondsOption(s, name, title, description, max) {
	var o = s.option(form.Value, name, title, description);
	o.datatype = 'and(ufloat,max(%d))'.format(max);
	return o;
}

/* config._check_zones: forwarding sections are wgagent_fwd_<src>_to_<dest>; two
 * different pairs must not give one name. Other zones as saved, this one as typed. */
function forwardingClash(section, section_id) {
	var seen = {}, clash = null;

	sectionNames('zone').forEach(function(z) {
		var to = (z == section_id) ? section.formvalue(z, 'forward_to') : uci.get(CONFIG, z, 'forward_to'),
		    from = (z == section_id) ? section.formvalue(z, 'forward_from') : uci.get(CONFIG, z, 'forward_from');

		L.toArray(to).map(function(d) { return [ z, d ]; })
			.concat(L.toArray(from).map(function(src) { return [ src, z ]; }))
			.forEach(function(pair) {
				var name = pair[0] + '_to_' + pair[1], other = seen[name];
				if (other && (other[0] != pair[0] || other[1] != pair[1]) && !clash)
					clash = _('forwardings %s -> %s and %s -> %s would both be the firewall section wgagent_fwd_%s; rename one of the zones')
						.format(pair[0], pair[1], other[0], other[1], name);
				seen[name] = seen[name] || pair;
			});
	});

	return clash || true;
}

function familyCheck(section, section_id, value) {
	var family = section.formvalue(section_id, 'family') || 'ipv4';
	if (value && family != 'any' && wgv.isIPv6(value) != (family == 'ipv6'))
		return _('not an %s address').format(family);
	return true;
}

return view.extend({
	load: function() {
		return Promise.all([ readRtTables(), uci.load(CONFIG) ]);
	},

	render: function(data) {
		var tables = data[0], m, s, o;

		m = new form.Map(CONFIG, _('wgagent'),
			_('Routes, source rules and firewall sections that follow connected WireGuard peers. ' +
			  'Save & Apply reloads wgagent; Status > wgagent shows what it did.'));
		m.tabbed = true;

		/* --- config agent: one, named or not (the default file names it 'main') */
		s = m.section(form.TypedSection, 'agent', _('Agent'));
		s.anonymous = true;

		o = s.option(form.Flag, 'enabled', _('Enabled'),
			_('Off: wgagent removes the routes it owns and waits for a reload.'));
		o.default = '1';

		o = s.option(form.ListValue, 'log_level', _('Log level'));
		[ 'debug', 'info', 'warning', 'error' ].forEach(function(l) { o.value(l); });
		o.default = 'info';

		o = s.option(form.Flag, 'wake', _('Wake on handshakes'),
			_('Watch the wire for WireGuard handshakes and read that interface at once (needs CAP_NET_RAW). ' +
			  'Off, or where the socket cannot be opened: polling only.'));
		o.default = '1';

		o = secondsOption(s, 'poll_interval', _('Poll interval'),
			_('Seconds between reads of the peers (> 0). Empty: 10 while the handshake wake-up runs ' +
			  '(a safety net), 2 without it.'), 3600);
		o.placeholder = _('10 or 2');
		o.validate = function(section_id, value) { return wgv.above(value, 0); };

		o = secondsOption(s, 'handshake_timeout', _('Handshake timeout'),
			_('A peer whose last handshake is older is down (> 0; WireGuard\'s REJECT_AFTER_TIME is 180).'), 86400);
		o.placeholder = '180';
		o.validate = function(section_id, value) { return wgv.above(value, 0); };

		o = secondsOption(s, 'hotplug_timeout', _('Hotplug timeout'),
			_('Seconds each script in /etc/hotplug.d/wgagent may run before it is killed (> 0).'), 3600);
		o.placeholder = '10';
		o.validate = function(section_id, value) { return wgv.above(value, 0); };

		o = s.option(form.Flag, 'keep_routes_on_stop', _('Keep routes on stop'));
		o.default = '0';

		o = s.option(form.Value, 'rule_priority', _('Rule priority'),
			_('First priority of wgagent\'s band of 1000 ip rule priorities.'));
		o.datatype = 'and(uinteger,range(1,%d))'.format(RULE_PRIORITY_MAX);
		o.placeholder = '5000';

		o = s.option(form.Value, 'ubus_socket', _('ubus socket'));
		o.placeholder = _('ubus\'s own');

		/* --- config interface: named after the kernel's WireGuard interface */
		s = gridSection(m, 'interface', _('Interfaces'),
			_('One per WireGuard interface whose peers wgagent routes while they are connected. ' +
			  'The name is the kernel interface; set route_allowed_ips \'0\' on its peers in Network > Interfaces.'));

		o = tableOption(s, 'table', _('Table'), _('Routing table for the peers\' routes.'), tables);
		o.placeholder = 'main';
		/* the name is the section's: uciname already, and at most IFNAMSIZ-1 long */
		o.validate = function(section_id, value) {
			return first(uniqueName(section_id, 'interface'), wgv.ifname(section_id),
				(value === '') ? true : wgv.table(value, tables));
		};

		o = s.option(form.Value, 'metric', _('Metric'));
		o.datatype = 'and(uinteger,max(4294967295))';
		o.placeholder = '0';

		o = s.option(form.Flag, 'route_default', _('Route default'),
			_('Also route 0.0.0.0/0 and ::/0 in AllowedIPs.'));
		o.default = '0';
		o.modalonly = true;

		o = secondsOption(s, 'idle_timeout', _('Idle timeout'),
			_('Seconds without received traffic after which a peer is down; 0 = off. ' +
			  'Above twice the peers\' PersistentKeepalive.'), 86400);
		o.placeholder = '0';

		o = tableOption(s, 'source_table', _('Source table'),
			_('ip rule "from <AllowedIP> lookup" this table for the up peers.'), tables);
		o.modalonly = true;

		o = s.option(form.DynamicList, 'yield_to', _('Yield to'),
			_('Protocols of routing daemons (BIRD) whose route for a peer\'s prefix means it is connected at ' +
			  'another router: wgagent\'s route goes beside it, and hands the peer off (README "Many sites"). ' +
			  'Empty: bird zebra babel bgp isis ospf rip eigrp; "none": off.'));
		o.modalonly = true;
		o.validate = function(section_id, value) {
			return wgv.protocol(value, this.section.formvalue(section_id, 'yield_to'));
		};

		/* --- config peer: optional per-peer settings */
		s = gridSection(m, 'peer', _('Peers'),
			_('Optional per-peer settings, by public key as `wg show` prints it.'));

		o = s.option(form.Value, 'interface', _('Interface'));
		sectionNames('interface').forEach(function(n) { o.value(n); });
		o.rmempty = false;
		o.validate = function(section_id, value) {
			if (value !== '' && sectionNames('interface').indexOf(value) == -1)
				return _('no "interface" section of that name');
			return uniqueName(section_id, 'peer');
		};

		o = s.option(form.Value, 'public_key', _('Public key'));
		o.rmempty = false;
		o.validate = function(section_id, value) {
			if (value === '')
				return true;
			var key = wgv.wgKey(value);
			if (key !== true)
				return key;
			var iface = this.section.formvalue(section_id, 'interface'), dup = null;
			uci.sections(CONFIG, 'peer').forEach(function(p) {
				if (p['.name'] != section_id && p.interface == iface && p.public_key == value && !dup)
					dup = p['.name'];
			});
			return dup ? _('the same peer is already configured in section "%s"').format(dup) : true;
		};

		o = s.option(form.Value, 'description', _('Description'), _('Shown in logs and status.'));

		o = s.option(form.Flag, 'route', _('Route'), _('Off: rules only, never a route.'));
		o.default = '1';

		o = secondsOption(s, 'idle_timeout', _('Idle timeout'), _('Overrides the interface\'s.'), 86400);
		o.modalonly = true;

		o = tableOption(s, 'source_table', _('Source table'), _('Overrides the interface\'s.'), tables);
		o.modalonly = true;

		/* --- config return_path (P2) */
		s = gridSection(m, 'return_path', _('Return paths'),
			_('Replies from a WAN address leave by the WAN, whatever the default route.'));

		deviceOrOption(s, 'network', _('Network'), _('A netifd interface (resolved through ubus), or ...'),
			_('... a kernel device.'));

		o = tableOption(s, 'table', _('Table'), null, tables);
		o.rmempty = false;
		o.validate = function(section_id, value) {
			return first(uniqueName(section_id, 'return_path'), (value === '') ? true : wgv.table(value, tables));
		};

		o = s.option(form.DynamicList, 'gateway', _('Gateways'),
			_('At most one per address family; default: learned from the device.'));
		o.datatype = 'ipaddr("nomask")';
		o.validate = function(section_id, value) {
			if (value === '')
				return true;
			var ok = wgv.ipAddress(value);
			if (ok !== true)
				return ok;
			var same = L.toArray(this.section.formvalue(section_id, 'gateway')).filter(function(g) {
				return wgv.isIPv6(g) == wgv.isIPv6(value);
			});
			return (same.length > 1) ? _('at most one gateway per address family') : true;
		};

		/* --- config zone (P4): written to /etc/config/firewall as wgagent_zone_<name> */
		s = gridSection(m, 'zone', _('Zones'),
			_('Firewall zones for WireGuard networks, their forwardings and port rule.'));

		o = s.option(form.DynamicList, 'network', _('Networks'), _('Default: the zone\'s name.'));
		o.datatype = 'uciname';
		o.validate = function(section_id, value) {
			return uniqueName(section_id, 'zone');
		};

		[ [ 'input', 'ACCEPT' ], [ 'output', 'ACCEPT' ], [ 'forward', 'REJECT' ] ].forEach(function(p) {
			o = s.option(form.ListValue, p[0], p[0].charAt(0).toUpperCase() + p[0].substr(1));
			[ 'ACCEPT', 'REJECT', 'DROP' ].forEach(function(v) { o.value(v); });
			o.default = p[1];
		});

		o = s.option(form.Flag, 'masq', _('Masquerading'));
		o.default = '0';

		o = s.option(form.Flag, 'masq_allow_invalid', _('Allow invalid'),
			_('Asymmetric paths through a masquerading zone need this.'));
		o.default = '0';
		o.modalonly = true;

		o = s.option(form.Flag, 'mtu_fix', _('MSS clamping'));
		o.default = '1';
		o.modalonly = true;

		[ [ 'forward_to', _('Forward to') ], [ 'forward_from', _('Forward from') ] ].forEach(function(p) {
			o = s.option(form.DynamicList, p[0], p[1]);
			o.datatype = 'uciname';
			zoneChoices(o);
			o.validate = function(section_id, value) {
				if (value == section_id)
					return _('a zone cannot forward to itself');
				return forwardingClash(this.section, section_id);
			};
		});

		o = s.option(form.Value, 'allow_port', _('Allow port'), _('A rule accepting UDP to this port ...'));
		o.datatype = 'and(port,min(1))';

		o = s.option(form.Value, 'allow_from', _('Allow from'), _('... from this zone.'));
		o.datatype = 'uciname';
		o.placeholder = 'wan';
		zoneChoices(o);
		o.modalonly = true;

		/* --- config nat */
		s = gridSection(m, 'nat', _('NAT'), _('SNAT or masquerading of a source leaving by a device or zone.'));

		/* no datatype: after 'cidr' matched, validation.js hands validate() the
		 * prefix length, not the value (its apply() overwrites the value it checks),
		 * so wgv.prefixOrAddress checks it all (ip_network(strict) or ip_address) */
		o = s.option(form.Value, 'src_ip', _('Source'), _('A prefix or an address.'));
		o.rmempty = false;
		o.validate = function(section_id, value) {
			if (value === '')
				return uniqueName(section_id, 'nat');
			return first(uniqueName(section_id, 'nat'), wgv.prefixOrAddress(value),
				L.bind(familyCheck, null, this.section, section_id, value));
		};

		zoneChoices(deviceOrOption(s, 'dest', _('Zone'), _('An outgoing zone, or ...'), _('... an outgoing device.'))[0]);

		o = s.option(form.ListValue, 'target', _('Target'));
		[ 'MASQUERADE', 'SNAT', 'ACCEPT' ].forEach(function(v) { o.value(v); });
		o.default = 'MASQUERADE';

		/* hidden, and so removed, unless SNAT: fw4 drops snat_ip on other targets */
		o = s.option(form.Value, 'snat_ip', _('SNAT address'));
		o.datatype = 'ipaddr("nomask")';
		o.depends('target', 'SNAT');
		o.rmempty = false;
		o.validate = function(section_id, value) {
			if (value === '')
				return true;
			return first(wgv.ipAddress(value), L.bind(familyCheck, null, this.section, section_id, value));
		};

		o = s.option(form.ListValue, 'family', _('Family'));
		[ 'ipv4', 'ipv6', 'any' ].forEach(function(v) { o.value(v); });
		o.default = 'ipv4';

		return m.render();
	}
});
