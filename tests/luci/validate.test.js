'use strict';
/*
 * wgagent/validate.js (the settings form's checks) case by case, and the
 * stand-in's datatypes where validation.js has a quirk a view must know about.
 * The exhaustive comparison with config.py is tests/test_luci.py's.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const { luci } = require('./helpers.js');

async function wgv() {
	const rt = luci({});
	return { wgv: await rt.L.require('wgagent.validate'), rt };
}

test('keys: 44 characters of base64 whose character 43 has its padding bits clear, as wg prints them', async () => {
	const { wgv: v } = await wgv();
	const key = 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=';
	assert.equal(v.wgKey(key), true);
	for (const c of 'AEIMQUYcgkosw048')
		assert.equal(v.wgKey(key.substr(0, 42) + c + '='), true, c);
	assert.match(v.wgKey(key.substr(0, 42) + 'h='), /padding bits of character 43 \("h"\).*"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="/);
	for (const bad of [ key.substr(1), key + '=', key.replace('=', 'A'), ' ' + key.substr(1), key.substr(0, 42) + '==', key.replace('x', '-') ])
		assert.notEqual(v.wgKey(bad), true, bad);
});

test('rt_tables read as config.read_rt_tables reads it: int(x, 0), first line wins, built-in names first', async () => {
	const { wgv: v } = await wgv();
	const names = v.parseRtTables([
		[ '# comment', '255 local', '100 wan # trailing', '0x12c hex', '0o17 oct', '0b11 bin', '1_000 under', '010 leadingzero',
		  '00 zeros', '0_0 zerounder', '1__0 double', '_1 lead', '+7 plus', '-5 minus', '0x bare', 'junk', '200', '100 wan2', '7 main' ],
		[ '300 wan', '301 late' ]
	]);
	assert.deepEqual(names, { main: 254, local: 255, default: 253, wan: 100, hex: 300, oct: 15, bin: 3, under: 1000,
		zeros: 0, zerounder: 0, plus: 7, minus: -5, wan2: 100, late: 301 });
	assert.equal(v.table('hex', names), true);
	assert.match(v.table('minus', names), /is number -5 in rt_tables/);
	assert.match(v.table('zeros', names), /is number 0/);
	assert.match(v.table('0', names), /out of range/);
	assert.equal(v.table('007', names), true);
	assert.match(v.table(' main', names), /unknown table name/);
});

test('addresses as Python\'s ipaddress takes them, without scope ids', async () => {
	const { wgv: v } = await wgv();
	const ok = [ '1.2.3.4', '0.0.0.0', '255.255.255.255', '::', '::1', '1::', 'fe80::1', '1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7::',
		'::2:3:4:5:6:7:8', '::ffff:1.2.3.4', '1:2:3:4:5:6:1.2.3.4', 'ABCD::ef' ];
	const bad = [ '01.2.3.4', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.04', ' 1.2.3.4', '1::2::3', ':1::', '1:::', '::1:', '1:2:3:4:5:6:7:8:9',
		'1:2:3:4:5:6:7', '12345::', 'fe80::1%wan', '::ffff:01.2.3.4', '1:2:3:4:5:6:7:1.2.3.4', 'g::1', '' ];
	for (const a of ok)
		assert.equal(v.ipAddress(a), true, a);
	for (const a of bad)
		assert.notEqual(v.ipAddress(a), true, a);
});

test('prefixes are strict (no host bits), lengths within the family', async () => {
	const { wgv: v } = await wgv();
	for (const p of [ '10.0.31.0/24', '0.0.0.0/0', '10.0.31.5/32', '2001:db8::/32', '::/0', '2001:db8::1/128' ])
		assert.equal(v.prefix(p), true, p);
	assert.match(v.prefix('10.0.31.5/24'), /host bits/);
	assert.match(v.prefix('2001:db8::1/64'), /host bits/);
	for (const p of [ '10.0.31.0/33', '::/129', '10.0.31.0', '10.0.31.0/', '10.0.31.0/255.255.255.0', '01.0.0.0/8' ])
		assert.notEqual(v.prefix(p), true, p);
	assert.equal(v.prefixOrAddress('10.0.31.5'), true);
});

test('interface names: 1 to 15 of letters, digits and _ . @ -, not . or ..', async () => {
	const { wgv: v } = await wgv();
	for (const n of [ 'wg0', 'wg_s2s', 'eth0.2', 'pppoe-wan', 'a@b', 'x'.repeat(15) ])
		assert.equal(v.ifname(n), true, n);
	for (const n of [ '', '.', '..', 'x'.repeat(16), 'wg 0', 'wg/0', 'wg:0', 'wg+', 'wg#1', 'wgä' ])
		assert.notEqual(v.ifname(n), true, n);
});

test('validation.js quirk: after cidr matched, validate() is handed the prefix length', async () => {
	const { rt } = await wgv();
	let seen = null;
	const r = rt.validation.create('cidr', false, (value) => { seen = value; return true; }).check('10.0.0.0/8');
	assert.deepEqual([ r.valid, seen ], [ true, '8' ]);
	/* ipaddr("nomask") and the numeric types leave the value alone */
	for (const [ type, value ] of [ [ 'ipaddr("nomask")', '2001:db8::1' ], [ 'and(uinteger,range(1,5))', '3' ], [ 'and(ufloat,max(10))', '2.5' ] ]) {
		rt.validation.create(type, false, (v) => { seen = v; return true; }).check(value);
		assert.equal(seen, value, type);
	}
});

test('the datatypes the form uses, as validation.js judges them', async () => {
	const { rt } = await wgv();
	const check = (type, v) => rt.validation.create(type, false).check(v).valid;
	const cases = [
		[ 'and(uinteger,range(1,31765))', [ '1', '5000', '31765' ], [ '0', '31766', '-1', '1.5', '+1', ' 1' ] ],
		[ 'and(uinteger,max(4294967295))', [ '0', '4294967295' ], [ '4294967296', '-0.5' ] ],
		[ 'and(ufloat,max(3600))', [ '0', '0.5', '3600' ], [ '3600.1', '1e3', '.5', '5.', 'nan' ] ],
		[ 'and(port,min(1))', [ '1', '65535', '080' ], [ '0', '65536' ] ],
		[ 'uciname', [ 'lan', 'wg_s2s', 'A1' ], [ 'wg-0', 'wg.0', '' ] ],
		[ 'netdevname', [ 'wg0', 'eth0.2', 'wg+' ], [ 'wg 0', 'wg/0', 'x'.repeat(16), '.', 'wg%1' ] ],
		[ 'ipaddr("nomask")', [ '1.2.3.4', '01.2.3.4', '::1', '::ffff:1.2.3.4' ], [ '1.2.3.4/8', 'fe80::1%wan', '1.2.3.256' ] ]
	];
	for (const [ type, good, bad ] of cases) {
		for (const v of good)
			assert.equal(check(type, v), true, `${type} ${v}`);
		for (const v of bad)
			assert.equal(check(type, v), false, `${type} ${v}`);
	}
	assert.throws(() => rt.validation.create('nosuchtype'), /Unhandled token/);
});
