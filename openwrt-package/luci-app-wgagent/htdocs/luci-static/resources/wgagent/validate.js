'use strict';
'require baseclass';

/*
 * wgagent's value checks, for the settings form. Each one accepts no value that
 * wgagent/config.py refuses; where the LuCI datatype on the same field is looser
 * (netdevname allows '+' and '#', ip4addr allows leading zeros, cidr allows host
 * bits), the function here adds what config.py adds. They return true or the
 * message to show, as a form option's validate() must.
 *
 * A few values wgagent accepts are refused here on purpose, where the form never
 * needs them: surrounding blanks (config.py strips keys and tables), Python's
 * numeric spellings ('1_000', '+5', '1e3'), scoped IPv6 ('fe80::1%wan'), netmask
 * notation ('10.0.0.0/255.0.0.0'). tests/test_luci.py runs every case through
 * both sides.
 */

/* config.BUILTIN_TABLES: known without any rt_tables file */
var BUILTIN_TABLES = { 'main': 254, 'local': 255, 'default': 253 };
var TABLE_MAX = 4294967295;

/* config.RT_TABLES, read in this order, each followed by its .d/*.conf (sorted) */
var RT_TABLES = [ '/etc/iproute2/rt_tables', '/usr/share/iproute2/rt_tables' ];

var B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/* config.BUILTIN_PROTOS: iproute2's own route protocol names (yield_to) */
var BUILTIN_PROTOS = {
	'unspec': 0, 'redirect': 1, 'kernel': 2, 'boot': 3, 'static': 4, 'gated': 8, 'ra': 9, 'mrt': 10,
	'zebra': 11, 'bird': 12, 'dnrouted': 13, 'xorp': 14, 'ntk': 15, 'dhcp': 16, 'keepalived': 18,
	'babel': 42, 'openr': 99, 'bgp': 186, 'isis': 187, 'ospf': 188, 'rip': 189, 'eigrp': 192
};

/* int(text, 0) as Python reads it: a sign, then 0x/0o/0b digits or decimal
 * without leading zeros (zeros alone are fine), single underscores between digits */
function pyInt0(text) {
	var m = /^([+-]?)(?:0([xX])((?:_?[0-9a-fA-F])+)|0([oO])((?:_?[0-7])+)|0([bB])((?:_?[01])+)|([1-9](?:_?[0-9])*)|(0(?:_?0)*))$/.exec(text);

	if (!m)
		return null;

	var sign = (m[1] == '-') ? -1 : 1;

	if (m[2]) return sign * parseInt(m[3].replace(/_/g, ''), 16);
	if (m[4]) return sign * parseInt(m[5].replace(/_/g, ''), 8);
	if (m[6]) return sign * parseInt(m[7].replace(/_/g, ''), 2);
	if (m[8]) return sign * parseInt(m[8].replace(/_/g, ''), 10);
	return 0;
}

/* ipaddress.IPv4Address: four decimal octets 0..255, no leading zeros */
function ip4(text) {
	var octets = text.split('.');

	if (octets.length != 4)
		return null;

	for (var i = 0; i < 4; i++) {
		var o = octets[i];
		if (!/^[0-9]{1,3}$/.test(o) || (o.length > 1 && o.charAt(0) == '0') || +o > 255)
			return null;
	}

	return octets.map(Number);
}

/* ipaddress.IPv6Address without a scope id: eight hextets of 1..4 hex digits, one
 * '::' for a run of zeros, the last 32 bits optionally as an IPv4 address; the
 * sixteen bytes, or null */
function ip6(text) {
	var parts = text.split(':');

	if (parts.length < 3)
		return null;

	if (parts[parts.length - 1].indexOf('.') > -1) {
		var v4 = ip4(parts.pop());
		if (!v4)
			return null;
		parts.push(((v4[0] << 8) | v4[1]).toString(16), ((v4[2] << 8) | v4[3]).toString(16));
	}

	if (parts.length > 9)
		return null;

	var skip = null;
	for (var i = 1; i < parts.length - 1; i++) {
		if (parts[i] === '') {
			if (skip !== null)
				return null;  /* two '::' */
			skip = i;
		}
	}

	var hi, lo, skipped;
	if (skip !== null) {
		hi = skip;
		lo = parts.length - skip - 1;
		if (parts[0] === '' && --hi)
			return null;  /* a single leading ':' */
		if (parts[parts.length - 1] === '' && --lo)
			return null;  /* a single trailing ':' */
		skipped = 8 - (hi + lo);
		if (skipped < 1)
			return null;
	}
	else {
		if (parts.length != 8 || parts[0] === '' || parts[7] === '')
			return null;
		hi = 8;
		lo = 0;
		skipped = 0;
	}

	var words = [];
	var hextet = function(h) {
		if (!/^[0-9a-fA-F]{1,4}$/.test(h))
			return false;
		words.push(parseInt(h, 16));
		return true;
	};

	for (var i = 0; i < hi; i++)
		if (!hextet(parts[i]))
			return null;
	for (var i = 0; i < skipped; i++)
		words.push(0);
	for (var i = parts.length - lo; i < parts.length; i++)
		if (!hextet(parts[i]))
			return null;

	var bytes = [];
	words.forEach(function(w) { bytes.push(w >> 8, w & 0xff); });
	return bytes;
}

/* an address as bytes (4 or 16), or null */
function address(text) {
	return ip4(text) || ip6(text);
}

return baseclass.extend({
	BUILTIN_TABLES: BUILTIN_TABLES,
	RT_TABLES: RT_TABLES,

	/* config.read_rt_tables for lines already read: {name: number}, the built-in
	 * names first and then the first line naming each table; files in the order
	 * given. Lines that do not parse are skipped, as there. */
	parseRtTables: function(files) {
		var names = Object.assign({}, BUILTIN_TABLES);

		(files || []).forEach(function(lines) {
			(lines || []).forEach(function(line) {
				var parts = String(line).split('#')[0].trim().split(/\s+/);
				if (parts.length < 2)
					return;
				var num = pyInt0(parts[0]);
				if (num !== null && !Object.prototype.hasOwnProperty.call(names, parts[1]))
					names[parts[1]] = num;
			});
		});

		return names;
	},

	/* config.table: a number 1..4294967295, or a name from rt_tables */
	table: function(value, tables) {
		if (/^[0-9]+$/.test(value))
			return (+value >= 1 && +value <= TABLE_MAX)
				? true : _('table number out of range: must be 1..4294967295');

		if (tables && Object.prototype.hasOwnProperty.call(tables, value)) {
			var num = tables[value];
			return (num >= 1 && num <= TABLE_MAX)
				? true : _('table "%s" is number %d in rt_tables: must be 1..4294967295').format(value, num);
		}

		return _('unknown table name (not a number and not in /etc/iproute2/rt_tables)');
	},

	/* config.protocols, one entry of yield_to: a number 0..255 or a protocol name
	 * (the built-in ones only: names of rt_protos.d files are refused here), or
	 * 'none' alone (all: the list's entries) */
	protocol: function(value, all) {
		if (value === '')
			return true;
		if (value == 'none')
			return ((all || []).filter(function(v) { return v !== ''; }).length > 1)
				? _('"none" turns yield_to off and stands alone') : true;
		if (/^[0-9]+$/.test(value))
			return (+value <= 255) ? true : _('protocol %s out of range: must be 0..255').format(value);
		return Object.prototype.hasOwnProperty.call(BUILTIN_PROTOS, value)
			? true : _('unknown protocol "%s" (not a number 0..255 and not one of iproute2\'s names)').format(value);
	},

	/* config.ifname: a kernel interface name */
	ifname: function(value) {
		if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(value) || value == '.' || value == '..')
			return _('not a valid interface name (1-15 characters: letters, digits, "_", ".", "@", "-")');
		return true;
	},

	/* config.uci_name: a netifd interface or zone name */
	uciName: function(value) {
		return /^[A-Za-z0-9_]+$/.test(value) ? true : _('not a netifd interface name ([A-Za-z0-9_])');
	},

	/* config.wg_key: 44 characters of base64 for 32 bytes, the last character
	 * before '=' with its two padding bits clear, as wg(8) prints keys (and as
	 * wireguard-tools' key_from_base64 demands) */
	wgKey: function(value) {
		if (!/^[A-Za-z0-9+\/]{43}=$/.test(value))
			return _('not a WireGuard key (44 characters of base64, 32 bytes)');

		var idx = B64.indexOf(value.charAt(42));
		if (idx & 3)
			return _('not a WireGuard key as wg prints it: the padding bits of character 43 ("%s") are set, which wg refuses; with them clear it would read "%s"')
				.format(value.charAt(42), value.substr(0, 42) + B64.charAt(idx & ~3) + '=');

		return true;
	},

	/* config.ip_address */
	ipAddress: function(value) {
		return address(value) ? true : _('not an IP address');
	},

	/* config.prefix: ipaddress.ip_network(strict=True), written address/length */
	prefix: function(value) {
		var m = /^([^\/]+)\/([0-9]{1,3})$/.exec(value),
		    bytes = m ? address(m[1]) : null,
		    len = m ? +m[2] : -1;

		if (!bytes || len > bytes.length * 8)
			return _('not an IP prefix');

		for (var bit = len; bit < bytes.length * 8; bit++)
			if (bytes[bit >> 3] & (0x80 >> (bit & 7)))
				return _('not an IP prefix (host bits set)');

		return true;
	},

	/* nat src_ip: a prefix when it has a '/', else an address */
	prefixOrAddress: function(value) {
		return (value.indexOf('/') > -1) ? this.prefix(value) : this.ipAddress(value);
	},

	/* is the address IPv6 (config.py looks for a ':') */
	isIPv6: function(value) {
		return value.indexOf(':') > -1;
	},

	/* number(lo, hi, lo_open=True) beyond the ufloat and max() datatypes */
	above: function(value, lo) {
		return (value === '' || +value > lo) ? true : _('must be > %s').format(lo);
	}
});
