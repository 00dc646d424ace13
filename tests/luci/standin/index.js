'use strict';
/*
 * The LuCI stand-in, assembled: core.js (L, classes, dom, poll, rpc, require),
 * validation.js, ui.js, uci.js (uci, fs), form.js, and the router side in
 * ubus.js. As in luci.js, `require baseclass` and `require view` give classes,
 * `require dom` and `require poll` the singletons, and ui, rpc, uci, fs and form
 * instances; the view class draws itself into #view when instantiated
 * (load() -> render() -> #view, then the Save/Apply/Reset footer unless the view
 * nulls those handlers).
 *
 *   const rt = createLuCI({ window, document, readResource, acl: [...],
 *                           objects: { wgagent: {...} }, configs: {...}, files: {...} });
 *   const view = await rt.L.require('view.wgagent.status');
 *   await view.rendered;
 *
 * rt.ubus.log lists every ACL check; rt.ubus.objects.uci.calls every uci change call.
 */

const { createRuntime } = require('./core.js');
const { makeFactory } = require('./validation.js');
const makeUi = require('./ui.js');
const { makeUci, makeFs } = require('./uci.js');
const makeForm = require('./form.js');
const ubusMod = require('./ubus.js');

function createLuCI(opts) {
	const rt = createRuntime(opts);
	const { Class, L, dom, E } = rt;
	const document = opts.document;

	rt.ubus = ubusMod.createUbus({ acl: opts.acl || [] });
	rt.ubus.objects.session = ubusMod.sessionObject();
	rt.ubus.objects.uci = ubusMod.uciObject(opts.configs || {});
	rt.ubus.objects.file = ubusMod.fileObject(opts.files || {});
	Object.assign(rt.ubus.objects, opts.objects || {});

	rt.validation = makeFactory(rt.window._);

	const once = (fn) => { let v; return () => (v === undefined ? (v = fn()) : v); };
	const ui = once(() => (rt.ui = makeUi(rt)));
	const uci = once(() => (rt.uci = makeUci(rt)));
	const fs = once(() => (rt.fs = makeFs(rt)));
	const form = once(() => { ui(); uci(); return (rt.form = makeForm(rt)); });

	const View = Class.extend({
		__name__: 'LuCI.view',
		__init__() {
			const vp = document.getElementById('view');
			dom.content(vp, E('div', { 'class': 'spinning' }, [ _('Loading view…') ]));
			this.rendered = Promise.resolve(this.load())
				.then(L.bind(this.render, this))
				.then((nodes) => {
					dom.content(vp, nodes);
					dom.append(vp, this.addFooter());
				})
				.catch((e) => { rt.errors.push(e); throw e; });
			this.rendered.catch(() => {});
		},
		load() {},
		render() {},
		handleSave(ev) {
			const maps = document.getElementById('maincontent').querySelectorAll('.cbi-map');
			return Promise.all(Array.from(maps).map((m) => dom.callClassMethod(m, 'save')));
		},
		handleSaveApply(ev, mode) {
			return this.handleSave(ev).then(() => ui().changes.apply(mode != '0'));
		},
		handleReset(ev) {
			const maps = document.getElementById('maincontent').querySelectorAll('.cbi-map');
			return Promise.all(Array.from(maps).map((m) => dom.callClassMethod(m, 'reset')));
		},
		addFooter() {
			if (!this.handleSaveApply && !this.handleSave && !this.handleReset)
				return E('div', {}, []);
			return E('div', { 'class': 'cbi-page-actions' }, [
				this.handleSaveApply ? E('button', { 'data-action': 'save-apply', 'click': L.bind(this.handleSaveApply, this) }, [ _('Save & Apply') ]) : '',
				this.handleSave ? E('button', { 'data-action': 'save', 'click': L.bind(this.handleSave, this) }, [ _('Save') ]) : '',
				this.handleReset ? E('button', { 'data-action': 'reset', 'click': L.bind(this.handleReset, this) }, [ _('Reset') ]) : ''
			]);
		}
	});

	rt.builtins = {
		baseclass: () => Class,
		view: () => View,
		dom: () => dom,
		poll: () => rt.poll,
		rpc: () => rt.rpc,
		ui, uci, fs, form,
		validation: () => rt.validation
	};

	/* LuCI's boot (setupDOM) starts the poll loop; a view's poll.add() then runs it */
	rt.poll.start();

	/* what a user does in a form, for the tests (not LuCI API) */
	rt.user = {
		widget(map, sid, option) {
			const res = map.lookupOption(option, sid);
			if (!res)
				throw new Error('stand-in: no visible field ' + option + ' in section ' + sid);
			return res[0].getUIElement(sid);
		},
		set(map, sid, option, value) {
			const w = rt.user.widget(map, sid, option);
			if (w.options.disabled)
				throw new Error('stand-in: ' + option + ' is read-only');
			w.userSet(value);
			map.checkDepends();
			return w;
		},
		/* TypedSection's add control: its name must pass 'uciname' (form.js) */
		add(section, name) {
			if (name != null && !/^[a-zA-Z0-9_]+$/.test(name))
				return Promise.reject(new Error('stand-in: the add button refuses the name ' + name));
			return section.handleAdd(null, name);
		},
		edit(section, sid) { return section.renderMoreOptionsModal(sid); },
		saveModal(section) { return section.handleModalSave(); },
		remove(section, sid) { return section.handleRemove(sid); }
	};

	return rt;
}


module.exports = { createLuCI, ubus: ubusMod };
