'use strict';
/*
 * The settings page driven from tests/test_luci.py, which holds config.py: one
 * JSON request on stdin, one JSON answer on stdout.
 *
 *   {"cmd": "schema", "values": <uci get values>, "files": {...}}
 *       -> {type: {class, options: {name: {class, datatype, default, placeholder,
 *          rmempty, optional, choices, labels, depends, modalonly}}}}
 *   {"cmd": "validate", "values", "files", "cases": [{type, sid, option, value,
 *    context: {option: value}}]}
 *       -> [{valid, error}] in order: the field as the user left it in the
 *          section's form (a grid's Edit modal), after setting the context fields
 *   {"cmd": "edit", "values", "files", "steps": [{op: "set", sid, option, value}
 *    (the agent section), {op: "edit"|"add", type, sid, values}, {op: "remove",
 *    type, sid}, {op: "apply"}]}
 *       -> {calls: [[method, args]], commits, error}: what rpcd was sent
 */

const { luci, uciSections } = require('./helpers.js');

function readStdin() {
	return new Promise((resolve) => {
		let data = '';
		process.stdin.setEncoding('utf8');
		process.stdin.on('data', (c) => { data += c; });
		process.stdin.on('end', () => resolve(JSON.parse(data)));
	});
}

async function page(req) {
	const rt = luci({ configs: { wgagent: uciSections(req.values) }, files: req.files || {} });
	const view = await rt.L.require('view.wgagent.settings');
	await view.rendered;
	const map = rt.dom.findClassInstance(rt.document.querySelector('.cbi-map'));
	return { rt, view, map, section: (type) => map.children.find((s) => s.sectiontype == type) };
}

function describe(o) {
	return {
		class: o.__name__,
		datatype: o.datatype || null,
		default: o.default,
		placeholder: o.placeholder != null ? String(o.placeholder) : null,
		rmempty: o.rmempty,
		optional: o.optional,
		choices: o.keylist || null,
		labels: o.vallist || null,
		depends: o.deps,
		modalonly: o.modalonly || false,
		validates: o.hasOwnProperty('validate')
	};
}

/* the form a section's fields are in: a grid's Edit modal, else the page */
async function formOf(p, type, sid) {
	const s = p.section(type);
	if (typeof s.renderMoreOptionsModal == 'function') {
		await p.rt.user.edit(s, sid);
		return s.modal.map;
	}
	return p.map;
}

const commands = {
	async schema(req) {
		const p = await page(req);
		const out = {};
		for (const s of p.map.children) {
			const options = {};
			for (const o of s.children)
				options[o.option] = describe(o);
			out[s.sectiontype] = { class: s.__name__, anonymous: !!s.anonymous, addremove: !!s.addremove, options };
		}
		return out;
	},

	async validate(req) {
		const p = await page(req);
		const out = [];
		const forms = {};
		for (const c of req.cases) {
			const key = c.type + '.' + c.sid;
			const form = forms[key] || (forms[key] = await formOf(p, c.type, c.sid));
			for (const [ k, v ] of Object.entries(c.context || {}))
				p.rt.user.set(form, c.sid, k, v);
			const w = p.rt.user.set(form, c.sid, c.option, c.value);
			out.push({ valid: w.isValid(), error: w.getValidationError() || null });
		}
		return out;
	},

	async edit(req) {
		const p = await page(req);
		const calls = p.rt.ubus.objects.uci.calls;
		try {
			for (const st of req.steps) {
				if (st.op == 'set') {
					p.rt.user.set(p.map, st.sid, st.option, st.value);
					await p.map.save(null, true);
				}
				else if (st.op == 'edit' || st.op == 'add') {
					const grid = p.section(st.type);
					await (st.op == 'add' ? p.rt.user.add(grid, st.sid) : p.rt.user.edit(grid, st.sid));
					for (const [ k, v ] of Object.entries(st.values || {}))
						p.rt.user.set(grid.modal.map, st.sid, k, v);
					await p.rt.user.saveModal(grid);
				}
				else if (st.op == 'remove') {
					await p.rt.user.remove(p.section(st.type), st.sid);
				}
				else if (st.op == 'apply') {
					await p.view.handleSaveApply(null);
				}
				else {
					throw new Error('harness: no step ' + st.op);
				}
			}
		}
		catch (e) {
			return { calls, commits: p.rt.ubus.objects.uci.commits, error: e.message };
		}
		return { calls, commits: p.rt.ubus.objects.uci.commits, error: null };
	}
};

readStdin().then((req) => commands[req.cmd](req)).then((res) => {
	process.stdout.write(JSON.stringify(res) + '\n');
}, (e) => {
	process.stderr.write(String(e && e.stack || e) + '\n');
	process.exit(1);
});
