'use strict';
/*
 * The router side of the stand-in: the ubus JSON-RPC gateway LuCI talks to
 * (uhttpd-mod-ubus, /ubus), the rpcd session ACLs it checks, and in-memory rpcd
 * objects `uci`, `file` and `session`. Written from rpcd's session.c (ACL grants
 * per scope; object and function matched with fnmatch(FNM_NOESCAPE), so '*'
 * spans '/'), rpcd's file.c and uci.c (a path or config checked in the "file" or
 * "uci" scope: PERMISSION_DENIED, 6) and uhttpd's ubus.c (a call the session may
 * not make is JSON-RPC error -32002 "Access denied", a missing object -32000
 * "Object not found"; a ubus status is the reply [status]).
 *
 * The session holds, as a root login does, the read and the write part of every
 * ACL group given, plus BASE: what luci-base's acl.d grants every LuCI user (ubus
 * methods of uci, file and session) and no uci config nor file path: those each
 * app must grant itself. Every check is logged, so a test can compare what the
 * pages needed with what luci-app-wgagent.json grants.
 *
 * The `uci` object here keeps configs in memory and logs each change call; the
 * exact rpcd semantics (upserts, list appends, sessions) are the Python double's
 * (tests/ubus_double), on which tests/test_luci.py replays that log.
 */

const UBUS = { OK: 0, INVALID_ARGUMENT: 2, METHOD_NOT_FOUND: 3, NOT_FOUND: 4, PERMISSION_DENIED: 6 };

/* luci-base/root/usr/share/rpcd/acl.d/luci-base.json: the ubus methods behind
 * uci.js, fs.js and form.js' access check */
const BASE = {
	'luci-base (stand-in)': {
		read: { ubus: { file: [ 'list', 'read', 'stat' ], uci: [ 'changes', 'get' ], session: [ 'access' ] } },
		write: { ubus: { uci: [ 'add', 'apply', 'confirm', 'delete', 'order', 'set', 'rename' ] } }
	}
};

class UbusStatus extends Error {
	constructor(code) {
		super('ubus status ' + code);
		this.code = code;
	}
}

/* fnmatch(pattern, s, FNM_NOESCAPE) without FNM_PATHNAME */
function fnmatch(pattern, s) {
	let re = '';
	for (let i = 0; i < pattern.length; i++) {
		const c = pattern[i];
		if (c == '*') re += '[\\s\\S]*';
		else if (c == '?') re += '[\\s\\S]';
		else if (c == '[') {
			const end = pattern.indexOf(']', i + 2);
			if (end < 0) { re += '\\['; continue; }
			let cls = pattern.substring(i + 1, end);
			if (cls[0] == '!') cls = '^' + cls.substr(1);
			re += '[' + cls.replace(/\\/g, '\\\\') + ']';
			i = end;
		}
		else re += c.replace(/[.+^${}()|\\\/]/g, '\\$&');
	}
	return new RegExp('^' + re + '$').test(s);
}

/* rpcd's login ACL setup: [scope, object, function, group] for both parts of a group */
function grantsOf(acls) {
	const out = [];
	for (const doc of acls)
		for (const group of Object.keys(doc))
			for (const part of [ 'read', 'write' ]) {
				const p = doc[group][part] || {};
				for (const obj of Object.keys(p.ubus || {}))
					for (const fn of p.ubus[obj]) out.push([ 'ubus', obj, fn, group ]);
				for (const conf of p.uci || []) out.push([ 'uci', conf, part, group ]);
				for (const path of Object.keys(p.file || {}))
					for (const perm of p.file[path]) out.push([ 'file', path, perm, group ]);
			}
	return out;
}

function createUbus(opts) {
	const grants = grantsOf([ BASE ].concat(opts.acl || []));
	const log = [];
	const objects = {};

	function access(scope, object, func) {
		const by = grants.find((g) => g[0] == scope && fnmatch(g[1], object) && fnmatch(g[2], func));
		log.push({ scope, object, func, allowed: !!by, grant: by || null });
		return !!by;
	}

	function call(sid, object, method, args, id) {
		const frame = { jsonrpc: '2.0', id };
		if (!access('ubus', object, method))
			return Object.assign(frame, { error: { code: -32002, message: 'Access denied' } });
		const obj = objects[object];
		if (!obj)
			return Object.assign(frame, { error: { code: -32000, message: 'Object not found' } });
		if (typeof obj[method] != 'function')
			return Object.assign(frame, { result: [ UBUS.METHOD_NOT_FOUND ] });
		return Promise.resolve().then(() => obj[method](args || {}, { sid, access })).then((data) => {
			if (data === undefined || data === null)
				return Object.assign(frame, { result: [ UBUS.OK ] });
			return Object.assign(frame, { result: [ UBUS.OK, JSON.parse(JSON.stringify(data)) ] });
		}, (e) => {
			if (e instanceof UbusStatus)
				return Object.assign(frame, { result: [ e.code ] });
			throw e;
		});
	}

	return { call, access, log, grants, objects, UbusStatus };
}

/* rpcd `uci` over configs {name: [{'.name', '.type', '.anonymous', option: value}]} */
function uciObject(configs) {
	const calls = [];  /* [method, args] of every change, for the replay on the rpcd double */
	const commits = [];
	let anon = 0;

	const find = (conf, name) => (configs[conf] || []).find((s) => s['.name'] == name);
	const needs = (ctx, conf, perm) => {
		if (!ctx.access('uci', conf, perm))
			throw new UbusStatus(UBUS.PERMISSION_DENIED);
		if (!configs[conf])
			throw new UbusStatus(UBUS.NOT_FOUND);
	};
	/* a change call on a section that must exist: NOT_FOUND (4) when it does not */
	const existing = (method, args, ctx) => {
		needs(ctx, args.config, 'write');
		calls.push([ method, args ]);
		const sec = find(args.config, args.section);
		if (!sec)
			throw new UbusStatus(UBUS.NOT_FOUND);
		return sec;
	};
	const setValues = (sec, values, append) => {
		for (const k of Object.keys(values || {})) {
			const v = values[k];
			if (Array.isArray(v))
				sec[k] = (append && Array.isArray(sec[k])) ? sec[k].concat(v) : v.slice();
			else if (v === '')
				delete sec[k];
			else
				sec[k] = String(v);
		}
	};

	return {
		calls, commits, configs,
		get(args, ctx) {
			needs(ctx, args.config, 'read');
			const values = {};
			configs[args.config].forEach((s, i) => {
				values[s['.name']] = Object.assign({}, s, { '.index': i });
			});
			if (args.section == null)
				return { values };
			const sec = values[args.section];
			if (!sec)
				return null;
			return (args.option == null) ? { values: sec } : (sec[args.option] != null ? { value: sec[args.option] } : null);
		},
		add(args, ctx) {
			needs(ctx, args.config, 'write');
			if (!args.type)
				throw new UbusStatus(UBUS.INVALID_ARGUMENT);
			calls.push([ 'add', args ]);
			let sec = args.name ? find(args.config, args.name) : null;
			if (!sec) {
				sec = { '.name': args.name || 'cfg' + (++anon).toString(16).padStart(2, '0') + 'standin',
				        '.type': args.type, '.anonymous': !args.name };
				configs[args.config].push(sec);
			}
			sec['.type'] = args.type;
			setValues(sec, args.values, true);
			return { section: sec['.name'] };
		},
		set(args, ctx) {
			setValues(existing('set', args, ctx), args.values, false);
		},
		delete(args, ctx) {
			const sec = existing('delete', args, ctx);
			const opts = args.options || (args.option ? [ args.option ] : null);
			if (!opts)
				configs[args.config].splice(configs[args.config].indexOf(sec), 1);
			else
				opts.forEach((o) => { delete sec[o]; });
		},
		order(args, ctx) {
			needs(ctx, args.config, 'write');
			calls.push([ 'order', args ]);
		},
		changes(args, ctx) {
			return { changes: {} };
		},
		apply(args, ctx) {
			commits.push([ 'apply', args ]);
		},
		confirm(args, ctx) {
			commits.push([ 'confirm', args ]);
		}
	};
}

/* rpcd `file`: read and list over files {path: text}; a directory is any prefix */
function fileObject(files) {
	return {
		read(args, ctx) {
			if (!ctx.access('file', args.path, 'read'))
				throw new UbusStatus(UBUS.PERMISSION_DENIED);
			if (!Object.prototype.hasOwnProperty.call(files, args.path))
				throw new UbusStatus(UBUS.NOT_FOUND);
			return { data: files[args.path] };
		},
		list(args, ctx) {
			if (!ctx.access('file', args.path, 'list'))
				throw new UbusStatus(UBUS.PERMISSION_DENIED);
			const dir = args.path.replace(/\/+$/, '') + '/';
			const names = new Map();
			for (const p of Object.keys(files))
				if (p.startsWith(dir)) {
					const rest = p.substr(dir.length), slash = rest.indexOf('/');
					names.set(slash < 0 ? rest : rest.substr(0, slash), slash < 0 ? 'file' : 'directory');
				}
			if (!names.size)
				throw new UbusStatus(UBUS.NOT_FOUND);
			return { entries: Array.from(names, ([ name, type ]) => ({ name, type })) };
		}
	};
}

/* rpcd `session` access: the ACL check form.js makes before it offers writes */
function sessionObject() {
	return {
		access(args, ctx) {
			return { access: ctx.access(args.scope || 'ubus', args.object, args['function']) };
		}
	};
}

module.exports = { createUbus, uciObject, fileObject, sessionObject, UbusStatus, fnmatch, grantsOf, BASE };
