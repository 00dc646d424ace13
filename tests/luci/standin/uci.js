'use strict';
/*
 * Stand-ins for LuCI.uci and LuCI.fs (luci-base htdocs/luci-static/resources/
 * uci.js and fs.js), written from their source and API docs.
 *
 * uci: load() is `uci get {config}`; changes stay local (values, creates,
 * changes, deletes) until save(), which sends, as uci.js does, one `uci delete`
 * per section with deletions (whole, or its options), one `uci add` per created
 * section (named: `name`, with the values set meanwhile), one `uci set` per
 * changed section, then reloads. get() of a list option is an array; set() with
 * null or '' removes an option; sections() is ordered by .index, new ones last.
 *
 * fs: read() is `file read {path}` -> data, list() `file list {path}` ->
 * entries, a ubus status rejecting as an Error; lines() splits the trimmed file
 * into trimmed lines (none for an empty file).
 */

module.exports = { makeUci, makeFs };

function makeUci(rt) {
	const { Class, L } = rt;
	const declare = (o) => rt.rpc.declare(o);

	const callLoad = declare({ object: 'uci', method: 'get', params: [ 'config' ], expect: { values: {} } });
	const callAdd = declare({ object: 'uci', method: 'add', params: [ 'config', 'type', 'name', 'values' ], expect: { section: '' } });
	const callSet = declare({ object: 'uci', method: 'set', params: [ 'config', 'section', 'values' ] });
	const callDelete = declare({ object: 'uci', method: 'delete', params: [ 'config', 'section', 'options' ] });

	return Class.singleton({
		__name__: 'LuCI.uci',
		__init__() {
			this.state = { newidx: 0, values: {}, creates: {}, changes: {}, deletes: {}, reorder: {} };
			this.loaded = {};
		},

		createSID(conf) {
			let sid;
			do { sid = 'new' + Math.floor(Math.random() * 0xffffff).toString(16).padStart(6, '0'); }
			while ((this.state.creates[conf] || {})[sid] || (this.state.values[conf] || {})[sid]);
			return sid;
		},

		resolveSID(conf, sid) { return sid; },

		load(packages) {
			const pkgs = L.toArray(packages).filter((p) => !this.state.values[p]);
			return Promise.all(pkgs.map((p) => callLoad(p).then((values) => {
				this.state.values[p] = values;
				this.loaded[p] = true;
			}))).then(() => packages);
		},

		unload(packages) {
			for (const p of L.toArray(packages)) {
				delete this.state.values[p];
				delete this.state.creates[p];
				delete this.state.changes[p];
				delete this.state.deletes[p];
				delete this.loaded[p];
			}
		},

		add(conf, type, name) {
			const n = this.state.creates, sid = name || this.createSID(conf);
			n[conf] = n[conf] || {};
			n[conf][sid] = { '.type': type, '.name': sid, '.create': name, '.anonymous': !name, '.index': 1000 + this.state.newidx++ };
			return sid;
		},

		remove(conf, sid) {
			const v = this.state.values, n = this.state.creates, c = this.state.changes, d = this.state.deletes;
			if (n[conf] && n[conf][sid]) {
				delete n[conf][sid];
			}
			else if (v[conf] && v[conf][sid]) {
				if (c[conf]) delete c[conf][sid];
				d[conf] = d[conf] || {};
				d[conf][sid] = true;
			}
		},

		sections(conf, type, cb) {
			const v = this.state.values[conf], n = this.state.creates[conf],
			      c = this.state.changes[conf], d = this.state.deletes[conf];
			const sa = [];
			if (!v)
				return sa;
			for (const s in v)
				if (!d || d[s] !== true)
					if (!type || v[s]['.type'] == type)
						sa.push(Object.assign({}, v[s], c ? c[s] : null));
			if (n)
				for (const s in n)
					if (!type || n[s]['.type'] == type)
						sa.push(Object.assign({}, n[s]));
			sa.sort((a, b) => a['.index'] - b['.index']);
			sa.forEach((s, i) => { s['.index'] = i; });
			if (typeof cb == 'function')
				sa.forEach((s) => cb.call(this, s, s['.name']));
			return sa;
		},

		get(conf, sid, opt) {
			const v = this.state.values, n = this.state.creates, c = this.state.changes, d = this.state.deletes;
			if (sid == null)
				return null;
			if (n[conf] && n[conf][sid])
				return (opt == null) ? n[conf][sid] : (n[conf][sid][opt] != null ? n[conf][sid][opt] : null);
			if (opt != null) {
				if (d[conf] && d[conf][sid] && (d[conf][sid] === true || d[conf][sid][opt]))
					return null;
				if (c[conf] && c[conf][sid] && c[conf][sid][opt] != null)
					return c[conf][sid][opt];
				return (v[conf] && v[conf][sid] && v[conf][sid][opt] != null) ? v[conf][sid][opt] : null;
			}
			if (!v[conf] || (d[conf] && d[conf][sid] === true) || !v[conf][sid])
				return null;
			const s = Object.assign({}, v[conf][sid], c[conf] ? c[conf][sid] : null);
			if (d[conf] && d[conf][sid])
				for (const o in d[conf][sid])
					delete s[o];
			return s;
		},

		set(conf, sid, opt, val) {
			const v = this.state.values, n = this.state.creates, c = this.state.changes, d = this.state.deletes;
			if (sid == null || opt == null || opt.charAt(0) == '.')
				return;
			if (n[conf] && n[conf][sid]) {
				if (val != null) n[conf][sid][opt] = val;
				else delete n[conf][sid][opt];
			}
			else if (val != null && val !== '') {
				if (d[conf] && d[conf][sid] === true)
					return;
				if (!v[conf] || !v[conf][sid])
					return;
				c[conf] = c[conf] || {};
				c[conf][sid] = c[conf][sid] || {};
				if (d[conf] && d[conf][sid]) {
					delete d[conf][sid][opt];
					if (!Object.keys(d[conf][sid]).length)
						delete d[conf][sid];
				}
				c[conf][sid][opt] = val;
			}
			else {
				if (c[conf] && c[conf][sid])
					delete c[conf][sid][opt];
				if (v[conf] && v[conf][sid] && v[conf][sid].hasOwnProperty(opt)) {
					d[conf] = d[conf] || {};
					d[conf][sid] = d[conf][sid] || {};
					if (d[conf][sid] !== true)
						d[conf][sid][opt] = true;
				}
			}
		},

		unset(conf, sid, opt) { return this.set(conf, sid, opt, null); },

		changes() {
			const out = {};
			for (const part of [ 'creates', 'changes', 'deletes' ])
				for (const conf in this.state[part])
					if (Object.keys(this.state[part][conf]).length)
						out[conf] = true;
			return Promise.resolve(out);
		},

		save() {
			const n = this.state.creates, c = this.state.changes, d = this.state.deletes;
			const pkgs = {}, tasks = [];
			for (const conf in d) {
				for (const sid in d[conf])
					tasks.push(callDelete(conf, sid, d[conf][sid] === true ? null : Object.keys(d[conf][sid])));
				pkgs[conf] = true;
			}
			for (const conf in n) {
				for (const sid in n[conf]) {
					const p = { type: null, name: null, values: {} };
					for (const k in n[conf][sid]) {
						if (k == '.type') p.type = n[conf][sid][k];
						else if (k == '.create') p.name = n[conf][sid][k];
						else if (k.charAt(0) != '.') p.values[k] = n[conf][sid][k];
					}
					tasks.push(callAdd(conf, p.type, p.name, p.values));
				}
				pkgs[conf] = true;
			}
			for (const conf in c) {
				for (const sid in c[conf])
					tasks.push(callSet(conf, sid, c[conf][sid]));
				pkgs[conf] = true;
			}
			return Promise.all(tasks).then(() => {
				const names = Object.keys(pkgs);
				this.unload(names);
				return this.load(names);
			});
		}
	});
}

function makeFs(rt) {
	const { Class } = rt;
	const callRead = rt.rpc.declare({ object: 'file', method: 'read', params: [ 'path' ] });
	const callList = rt.rpc.declare({ object: 'file', method: 'list', params: [ 'path' ] });

	function reply(expect, rc) {
		if (typeof rc == 'number' && rc != 0) {
			const e = new Error(rt.rpc.getStatusText(rc));
			e.name = { 2: 'InvalidArgumentError', 4: 'NotFoundError', 6: 'PermissionError' }[rc] || 'Error';
			throw e;
		}
		for (const key in expect) {
			if (rc != null && key != '')
				rc = rc[key];
			if (rc == null || Object.prototype.toString.call(rc) != Object.prototype.toString.call(expect[key]))
				rc = expect[key];
			break;
		}
		return rc;
	}

	return Class.singleton({
		__name__: 'LuCI.fs',
		read(path) { return callRead(path).then((rc) => reply({ data: '' }, rc)); },
		list(path) { return callList(path).then((rc) => reply({ entries: [] }, rc)); },
		lines(path) {
			return this.read(path).then((s) => {
				s = s.trim();
				return (s == '') ? [] : s.split(/\n/).map((l) => l.trim());
			});
		}
	});
}
