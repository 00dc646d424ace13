'use strict';
/*
 * Stand-in for LuCI.form (luci-base htdocs/luci-static/resources/form.js), written
 * from its source and API docs (LuCI.form.Map, TypedSection, TableSection,
 * GridSection, NamedSection, AbstractValue, Value, DynamicList, ListValue,
 * FlagValue, DummyValue). Modelled as there, since these decide which UCI values a
 * form writes:
 *
 * - Map.load(): `session access uci <config> write` (false: the form is
 *   read-only), uci.load(), each option's load() -> cfgvalue();
 * - render: each option's widget (ui.js) in a frame whose data-field is the cbid
 *   "cbid.<config>.<section>.<option>"; options with depends() start hidden;
 *   Map.checkDepends() shows and hides them (isDependencySatisfied: "and" within
 *   one depends() object, "or" across them, !reverse, !contains, !default) after
 *   each widget change;
 * - parse(): a hidden option is removed (unless retain); a visible one must be
 *   valid; empty: removed when rmempty or optional, else "must not be empty";
 *   else written when it differs from cfgvalue (isEqual). A Flag is removed when it
 *   equals its default and rmempty/optional holds, else written;
 * - Map.save(): checkDepends, parse, uci.save(), load, re-render;
 * - TypedSection: its sections by type, filter(); handleAdd(name) and
 *   handleRemove(sid) change uci and save;
 * - GridSection: rows show textvalue() only (options are not parsed there unless
 *   editable); Add or Edit opens a modal: a Map of its own holding a NamedSection
 *   with copies of the options (so an option's validate() sees that section), and
 *   its save saves it and reloads and redraws the page's Map.
 *
 * Only the rendering is simpler (no tab menus, no drag-sort, no modal markup).
 */

module.exports = function makeForm(rt) {
	const { Class, dom, E, L } = rt;
	const ui = rt.ui, uci = rt.uci;

	const callSessionAccess = rt.rpc.declare({
		object: 'session', method: 'access', params: [ 'scope', 'object', 'function' ], expect: { access: false }
	});

	function isEqual(x, y) {
		if (typeof y == 'object' && y instanceof RegExp)
			return (x == null) ? false : y.test(x);
		if (x != null && y != null && typeof x != typeof y)
			return false;
		if ((x == null && y != null) || (x != null && y == null))
			return false;
		if (Array.isArray(x)) {
			if (x.length != y.length)
				return false;
			for (let i = 0; i < x.length; i++)
				if (!isEqual(x[i], y[i]))
					return false;
		}
		else if (typeof x == 'object' && x !== null) {
			for (const k in x)
				if (x.hasOwnProperty(k) && (!y.hasOwnProperty(k) || !isEqual(x[k], y[k])))
					return false;
			for (const k in y)
				if (y.hasOwnProperty(k) && !x.hasOwnProperty(k))
					return false;
		}
		else if (x != y) {
			return false;
		}
		return true;
	}

	function isContained(x, y) {
		if (Array.isArray(x))
			return x.some((v) => v == y);
		if (L.isObject(x))
			return x.hasOwnProperty(y) && x[y] != null;
		if (typeof x == 'string')
			return x.indexOf(y) > -1;
		return false;
	}

	const AbstractElement = Class.extend({
		__name__: 'CBI.AbstractElement',
		__init__(title, description) {
			this.title = title || '';
			this.description = description || '';
			this.children = [];
		},
		append(obj) { this.children.push(obj); },
		parse(...args) { this.children.forEach((c) => c.parse(...args)); },
		render() { L.error('InternalError', 'Not implemented'); },
		loadChildren(...args) {
			return Promise.all(this.children.filter((c) => !c.disable).map((c) => c.load(...args)));
		},
		renderChildren(tab_name, ...args) {
			let index = 0;
			return Promise.all(this.children
				.filter((c) => (tab_name === null || c.tab === tab_name) && !c.disable)
				.map((c) => c.render(index++, ...args)));
		},
		stripTags(s) { return (s == null) ? '' : String(s).replace(/<[^>]*>/g, ''); },
		titleFn(attr, ...args) {
			let s = null;
			if (typeof this[attr] == 'function') s = this[attr](...args);
			else if (typeof this[attr] == 'string') s = args.length ? this[attr].format(...args) : this[attr];
			if (s != null) s = this.stripTags(String(s)).trim();
			return (s == null || s == '') ? null : s;
		}
	});

	const CBIMap = AbstractElement.extend({
		__name__: 'CBI.Map',
		__init__(config, ...rest) {
			this.super('__init__', rest);
			this.config = config;
			this.parsechain = [ config ];
			this.data = uci;
		},
		findElements(...args) {
			const q = (args.length == 1) ? args[0] : '[%s="%s"]'.format(args[0], args[1]);
			return this.root.querySelectorAll(q);
		},
		findElement(...args) {
			return this.root ? (this.findElements(...args)[0] || null) : null;
		},
		chain(config) {
			if (this.parsechain.indexOf(config) == -1)
				this.parsechain.push(config);
		},
		section(cls, ...args) {
			if (!CBIAbstractSection.isSubclass(cls))
				L.error('TypeError', 'Class must be a descendent of CBIAbstractSection');
			const obj = cls.instantiate([ this ].concat(args));
			this.append(obj);
			return obj;
		},
		load() {
			const checkACL = this.readonly == null;
			const tasks = [ checkACL ? callSessionAccess('uci', this.config, 'write') : true ]
				.concat(this.parsechain.map((c, i) => i ? L.resolveDefault(this.data.load(c)) : this.data.load(c)));
			return Promise.all(tasks).then((res) => {
				if (res[0] === false)
					this.readonly = true;
				return this.loadChildren();
			});
		},
		parse() {
			return Promise.all(this.children.map((c) => c.parse()));
		},
		save(cb, silent) {
			this.checkDepends();
			return this.parse()
				.then(cb)
				.then(this.data.save.bind(this.data))
				.then(this.load.bind(this))
				.catch((e) => {
					if (!silent)
						ui.showModal(_('Save error'), [ E('p', {}, [ e.message ]) ]);
					return Promise.reject(e);
				})
				.then(this.renderContents.bind(this));
		},
		reset() { return this.renderContents(); },
		render() { return this.load().then(this.renderContents.bind(this)); },
		renderContents() {
			const mapEl = this.root || (this.root = E('div', { 'id': 'cbi-%s'.format(this.config), 'class': 'cbi-map' }));
			dom.bindClassInstance(mapEl, this);
			return this.renderChildren(null).then((nodes) => {
				dom.content(mapEl, null);
				if (this.title)
					mapEl.appendChild(E('h2', { 'name': 'content' }, [ this.title ]));
				if (this.description)
					mapEl.appendChild(E('div', { 'class': 'cbi-map-descr' }, [ this.description ]));
				dom.append(mapEl, this.tabbed ? E('div', { 'class': 'cbi-map-tabbed' }, nodes) : nodes);
				this.checkDepends();
				return mapEl;
			});
		},
		lookupOption(name, section_id, config_name) {
			const id = (name.indexOf('.') > -1) ? 'cbid.%s'.format(name)
				: 'cbid.%s.%s.%s'.format(config_name || this.config, section_id, name);
			const elem = this.findElement('data-field', id);
			const sid = elem ? id.split(/\./)[2] : null;
			const inst = elem ? dom.findClassInstance(elem) : null;
			return (inst instanceof CBIAbstractValue) ? [ inst, sid ] : null;
		},
		checkDepends(ev, n) {
			let changed = false;
			for (const s of this.children)
				if (s.checkDepends(ev, n))
					changed = true;
			if (changed && (n || 0) < 10)
				this.checkDepends(ev, (n || 10) + 1);
		},
		isDependencySatisfied(depends, config_name, section_id) {
			let def = false;
			if (!Array.isArray(depends) || !depends.length)
				return true;
			for (const dep of depends) {
				let istat = true;
				const reverse = dep['!reverse'], contains = dep['!contains'];
				for (const k in dep) {
					if (k == '!reverse' || k == '!contains')
						continue;
					if (k == '!default') {
						def = true;
						istat = false;
						continue;
					}
					const res = this.lookupOption(k, section_id, config_name);
					const val = (res && res[0].isActive(res[1])) ? res[0].formvalue(res[1]) : null;
					istat = istat && (contains ? isContained(val, dep[k]) : isEqual(val, dep[k]));
				}
				if (istat ^ !!reverse)
					return true;
			}
			return def;
		}
	});

	const CBIAbstractSection = AbstractElement.extend({
		__name__: 'CBI.AbstractSection',
		__init__(map, sectionType, ...rest) {
			this.super('__init__', rest);
			this.sectiontype = sectionType;
			this.map = map;
			this.config = map.config;
			this.optional = true;
			this.addremove = false;
			this.dynamic = false;
		},
		cfgsections() { L.error('InternalError', 'Not implemented'); },
		filter() { return true; },
		load() {
			return Promise.all(this.cfgsections().map((sid) =>
				this.loadChildren(sid).then((values) => {
					values.forEach((v, i) => this.children[i].cfgvalue(sid, v));
				})));
		},
		parse() {
			const tasks = [];
			for (const sid of this.cfgsections())
				for (const c of this.children)
					tasks.push(c.parse(sid));
			return Promise.all(tasks);
		},
		tab(name, title, description) {
			if (this.tabs && this.tabs[name])
				throw 'Tab already declared';
			const entry = { name, title, description, children: [] };
			this.tabs = this.tabs || [];
			this.tabs.push(entry);
			this.tabs[name] = entry;
			this.tab_names = this.tab_names || [];
			this.tab_names.push(name);
		},
		option(cls, ...args) {
			if (!CBIAbstractValue.isSubclass(cls))
				throw L.error('TypeError', 'Class must be a descendant of CBIAbstractValue');
			const obj = cls.instantiate([ this.map, this ].concat(args));
			this.append(obj);
			return obj;
		},
		taboption(tabName, ...args) {
			if (!this.tabs || !this.tabs[tabName])
				throw L.error('ReferenceError', 'Associated tab not declared');
			const obj = this.option(...args);
			obj.tab = tabName;
			this.tabs[tabName].children.push(obj);
			return obj;
		},
		cfgvalue(section_id, option) {
			const rv = (arguments.length == 1) ? {} : null;
			for (const o of this.children)
				if (rv) rv[o.option] = o.cfgvalue(section_id);
				else if (o.option == option) return o.cfgvalue(section_id);
			return rv;
		},
		formvalue(section_id, option) {
			const rv = (arguments.length == 1) ? {} : null;
			for (const o of this.children) {
				const fn = this.map.root ? o.formvalue : o.cfgvalue;
				if (rv) rv[o.option] = fn.call(o, section_id);
				else if (o.option == option) return fn.call(o, section_id);
			}
			return rv;
		},
		getUIElement(section_id, option) {
			for (const o of this.children)
				if (o.option == option)
					return o.getUIElement(section_id);
			return null;
		},
		getOption(option) {
			if (arguments.length == 0) {
				const rv = {};
				this.children.forEach((o) => { rv[o.option] = o; });
				return rv;
			}
			return this.children.find((o) => o.option == option) || null;
		},
		renderUCISection(section_id) {
			if (!this.tabs)
				return this.renderOptions(null, section_id);
			return Promise.all(this.tab_names.map((t) => this.renderOptions(t, section_id)))
				.then((nodes) => E('div', {}, nodes));
		},
		renderOptions(tab_name, section_id) {
			const in_table = (this instanceof CBITableSection);
			return this.renderChildren(tab_name, section_id, in_table).then((nodes) => E('div', {}, nodes));
		},
		checkDepends(ev, n) {
			let changed = false;
			for (const sid of this.cfgsections()) {
				for (const o of this.children) {
					let active = o.isActive(sid);
					if (active != o.checkDepends(sid)) {
						o.setActive(sid, !active);
						active = !active;
						changed = true;
					}
					if (!n && active)
						o.triggerValidation(sid);
				}
			}
			return changed;
		}
	});

	const CBITypedSection = CBIAbstractSection.extend({
		__name__: 'CBI.TypedSection',
		cfgsections() {
			return this.map.data.sections(this.uciconfig || this.map.config, this.sectiontype)
				.map((s) => s['.name'])
				.filter(L.bind(this.filter, this));
		},
		handleAdd(ev, name) {
			this.map.data.add(this.uciconfig || this.map.config, this.sectiontype, name);
			return this.map.save(null, true);
		},
		handleRemove(section_id, ev) {
			this.map.data.remove(this.uciconfig || this.map.config, section_id);
			return this.map.save(null, true);
		},
		renderContents(cfgsections, nodes) {
			const config_name = this.uciconfig || this.map.config;
			const sectionEl = E('div', {
				'id': 'cbi-%s-%s'.format(config_name, this.sectiontype),
				'class': 'cbi-section',
				'data-tab': this.map.tabbed ? this.sectiontype : null,
				'data-tab-title': this.map.tabbed ? (this.title || this.sectiontype) : null
			});
			if (this.title)
				sectionEl.appendChild(E('h3', {}, [ this.title ]));
			if (this.description)
				sectionEl.appendChild(E('div', { 'class': 'cbi-section-descr' }, [ this.description ]));
			nodes.forEach((node, i) => {
				if (!this.anonymous)
					sectionEl.appendChild(E('h3', [ cfgsections[i].toUpperCase() ]));
				sectionEl.appendChild(E('div', {
					'id': 'cbi-%s-%s'.format(config_name, cfgsections[i]),
					'class': 'cbi-section-node',
					'data-section-id': cfgsections[i]
				}, [ node ]));
			});
			if (!nodes.length)
				sectionEl.appendChild(E('em', [ _('This section contains no values yet') ]));
			if (this.addremove)
				sectionEl.appendChild(E('div', { 'class': 'cbi-section-create' }));
			dom.bindClassInstance(sectionEl, this);
			return sectionEl;
		},
		render() {
			const sids = this.cfgsections();
			return Promise.all(sids.map((sid) => this.renderUCISection(sid)))
				.then((nodes) => this.renderContents(sids, nodes));
		}
	});

	const CBITableSection = CBITypedSection.extend({
		__name__: 'CBI.TableSection',
		tab() { throw 'Tabs are not supported by TableSection'; }
	});

	const CBINamedSection = CBIAbstractSection.extend({
		__name__: 'CBI.NamedSection',
		__init__(map, section_id, ...rest) {
			this.super('__init__', [ map ].concat(rest));
			this.section = section_id;
		},
		cfgsections() { return [ this.section ]; },
		handleAdd(ev) {
			this.map.data.add(this.uciconfig || this.map.config, this.sectiontype, this.section);
			return this.map.save(null, true);
		},
		handleRemove(ev) {
			this.map.data.remove(this.uciconfig || this.map.config, this.section);
			return this.map.save(null, true);
		},
		render() {
			const config_name = this.uciconfig || this.map.config;
			return Promise.all([ this.map.data.get(config_name, this.section), this.renderUCISection(this.section) ])
				.then(([ ucidata, nodes ]) => {
					const el = E('div', { 'class': 'cbi-section' });
					if (this.title)
						el.appendChild(E('h3', {}, [ this.title ]));
					if (ucidata)
						el.appendChild(E('div', { 'class': 'cbi-section-node', 'data-section-id': this.section }, [ nodes ]));
					dom.bindClassInstance(el, this);
					return el;
				});
		}
	});

	const CBIGridSection = CBITableSection.extend({
		__name__: 'CBI.GridSection',
		tab(name, title, description) { CBIAbstractSection.prototype.tab.call(this, name, title, description); },
		handleAdd(ev, name) {
			const sid = this.map.data.add(this.uciconfig || this.map.config, this.sectiontype, name);
			this.addedSection = sid;
			return this.renderMoreOptionsModal(sid);
		},
		/* the row: text previews, except for editable options */
		renderUCISection(section_id) {
			let index = 0;
			return Promise.all(this.children.filter((o) => !o.disable && !o.modalonly).map((o) => {
				if (o.editable)
					return o.render(index++, section_id, true);
				const value = o.textvalue(section_id);
				return E('td', { 'class': 'td cbi-value-field', 'data-name': o.option, 'data-title': this.stripTags(o.title) || null },
					[ (value != null) ? value : E('em', [ _('none') ]) ]);
			})).then((cells) => E('tr', { 'class': 'tr cbi-section-table-row', 'data-sid': section_id }, cells));
		},
		parse() {
			const tasks = [];
			for (const sid of this.cfgsections())
				for (const c of this.children)
					if (c.editable && !c.modalonly)
						tasks.push(c.parse(sid));
			return Promise.all(tasks);
		},
		/* Edit (or the Add that opened it): a Map of its own with a NamedSection
		 * holding copies of every option not marked modalonly === false */
		renderMoreOptionsModal(section_id) {
			const m = new CBIMap(this.map.config, null, null);
			const s = m.section(CBINamedSection, section_id, this.sectiontype);
			m.parent = this.map;
			m.readonly = this.map.readonly;
			s.tabs = this.tabs;
			s.tab_names = this.tab_names;
			for (const o1 of this.children) {
				if (o1.modalonly === false)
					continue;
				const o2 = Object.create(o1);
				o2.map = m;
				o2.section = s;
				o2.config = m.config;
				o2.data = {};
				s.children.push(o2);
			}
			this.modal = { map: m, section: s, sid: section_id };
			rt.modal = { title: section_id, map: m };
			return m.render().then(() => m);
		},
		handleModalSave() {
			const m = this.modal.map;
			let tasks = m.save(null, true);
			for (let p = m.parent; p; p = p.parent)
				tasks = tasks.then(L.bind(p.load, p)).then(L.bind(p.reset, p));
			return tasks.then(() => this.handleModalCancel());
		},
		handleModalCancel() {
			if (this.addedSection && this.modal) {
				/* Dismiss on a just-added section removes it (form.js) */
			}
			this.addedSection = null;
			this.modal = null;
			rt.modal = null;
		},
		renderContents(cfgsections, nodes) {
			const el = this.super('renderContents', [ cfgsections, nodes ]);
			el.classList.add('cbi-tblsection');
			return el;
		}
	});

	const CBIAbstractValue = AbstractElement.extend({
		__name__: 'CBI.AbstractValue',
		__init__(map, section, option, ...rest) {
			this.super('__init__', rest);
			this.section = section;
			this.option = option;
			this.map = map;
			this.config = map.config;
			this.deps = [];
			this.initial = {};
			this.rmempty = true;
			this.default = null;
			this.size = null;
			this.optional = false;
			this.retain = false;
		},
		depends(field, value) {
			this.deps.push((typeof field == 'string') ? { [field]: value } : field);
		},
		transformDepList(section_id) {
			return this.deps.map((d) => {
				const dep = {};
				for (const k in d) {
					if (k.charAt(0) === '!') dep[k] = d[k];
					else if (k.indexOf('.') !== -1) dep['cbid.%s'.format(k)] = d[k];
					else dep['cbid.%s.%s.%s'.format(this.uciconfig || this.section.uciconfig || this.map.config,
						this.ucisection || section_id, k)] = d[k];
				}
				return dep;
			}).filter((d) => Object.keys(d).length);
		},
		transformChoices() {
			if (!Array.isArray(this.keylist) || !this.keylist.length)
				return null;
			const choices = {};
			this.keylist.forEach((k, i) => { choices[k] = this.vallist[i]; });
			return choices;
		},
		checkDepends(section_id) {
			return this.map.isDependencySatisfied(this.deps,
				this.uciconfig || this.section.uciconfig || this.map.config, section_id);
		},
		cbid(section_id) {
			if (section_id == null)
				L.error('TypeError', 'Section ID required');
			return 'cbid.%s.%s.%s'.format(this.uciconfig || this.section.uciconfig || this.map.config, section_id, this.option);
		},
		load(section_id) {
			return this.map.data.get(this.uciconfig || this.section.uciconfig || this.map.config,
				this.ucisection || section_id, this.ucioption || this.option);
		},
		getUIElement(section_id) {
			const node = this.map.findElement('id', this.cbid(section_id));
			const inst = node ? dom.findClassInstance(node) : null;
			return (inst instanceof ui.AbstractElement) ? inst : null;
		},
		cfgvalue(section_id, set_value) {
			if (section_id == null)
				L.error('TypeError', 'Section ID required');
			if (arguments.length == 2) {
				this.data = this.data || {};
				this.data[section_id] = set_value;
			}
			return this.data ? this.data[section_id] : null;
		},
		formvalue(section_id) {
			const elem = this.getUIElement(section_id);
			return elem ? elem.getValue() : null;
		},
		textvalue(section_id) {
			let cval = this.cfgvalue(section_id);
			if (cval == null)
				cval = this.default;
			if (Array.isArray(cval))
				cval = cval.join(' ');
			return (cval != null) ? '%h'.format(cval) : null;
		},
		validate() { return true; },
		isValid(section_id) {
			const elem = this.getUIElement(section_id);
			return elem ? elem.isValid() : true;
		},
		getValidationError(section_id) {
			const elem = this.getUIElement(section_id);
			return elem ? elem.getValidationError() : '';
		},
		isActive(section_id) {
			const field = this.map.findElement('data-field', this.cbid(section_id));
			return field != null && !field.classList.contains('hidden');
		},
		setActive(section_id, active) {
			const field = this.map.findElement('data-field', this.cbid(section_id));
			if (field && field.classList.contains('hidden') == active) {
				field.classList[active ? 'remove' : 'add']('hidden');
				return true;
			}
			return false;
		},
		triggerValidation(section_id) {
			const elem = this.getUIElement(section_id);
			return elem ? elem.triggerValidation() : true;
		},
		parse(section_id) {
			const active = this.isActive(section_id);
			if (active && !this.isValid(section_id)) {
				const title = this.stripTags(this.title).trim();
				return Promise.reject(new TypeError(_('Option "%s" contains an invalid input value.').format(title || this.option)
					+ ' ' + this.getValidationError(section_id)));
			}
			if (active) {
				const cval = this.cfgvalue(section_id), fval = this.formvalue(section_id);
				if (fval == null || fval == '') {
					if (this.rmempty || this.optional)
						return Promise.resolve(this.remove(section_id));
					const title = this.stripTags(this.title).trim();
					return Promise.reject(new TypeError(_('Option "%s" must not be empty.').format(title || this.option)));
				}
				if (this.forcewrite || !isEqual(cval, fval))
					return Promise.resolve(this.write(section_id, fval));
			}
			else if (!this.retain) {
				return Promise.resolve(this.remove(section_id));
			}
			return Promise.resolve();
		},
		write(section_id, formvalue) {
			return this.map.data.set(this.uciconfig || this.section.uciconfig || this.map.config,
				this.ucisection || section_id, this.ucioption || this.option, formvalue);
		},
		remove(section_id) {
			const cfg = this.uciconfig || this.section.uciconfig || this.map.config,
			      sid = this.ucisection || section_id, opt = this.ucioption || this.option;
			for (const sib of this.section.children) {
				if (sib === this || sib.ucioption == null)
					continue;
				if ((sib.uciconfig || sib.section.uciconfig || sib.map.config) == cfg &&
				    (sib.ucisection || section_id) == sid && (sib.ucioption || sib.option) == opt &&
				    sib.isActive(section_id))
					return;  /* another active option writes this UCI option */
			}
			this.map.data.unset(cfg, sid, opt);
		}
	});

	const CBIValue = CBIAbstractValue.extend({
		__name__: 'CBI.Value',
		value(key, val) {
			this.keylist = this.keylist || [];
			this.keylist.push(String(key));
			this.vallist = this.vallist || [];
			this.vallist.push(dom.elem(val) ? val : String(val != null ? val : key));
		},
		render(option_index, section_id, in_table) {
			return Promise.resolve(this.cfgvalue(section_id))
				.then(this.renderWidget.bind(this, section_id, option_index))
				.then(this.renderFrame.bind(this, section_id, in_table, option_index));
		},
		widgetOptions(section_id, extra) {
			return Object.assign({
				id: this.cbid(section_id),
				optional: this.optional || this.rmempty,
				datatype: this.datatype,
				placeholder: this.placeholder,
				validate: L.bind(this.validate, this, section_id),
				disabled: (this.readonly != null) ? this.readonly : this.map.readonly
			}, extra);
		},
		renderFrame(section_id, in_table, option_index, nodes) {
			const config_name = this.uciconfig || this.section.uciconfig || this.map.config;
			const depends = this.transformDepList(section_id);
			const attrs = {
				'data-index': option_index,
				'data-depends': depends,
				'data-field': this.cbid(section_id)
			};
			let optionEl;
			if (in_table) {
				optionEl = E('td', { 'class': 'td cbi-value-field', 'data-name': this.option, 'data-widget': this.__name__ },
					[ E('div', Object.assign({ 'id': 'cbi-%s-%s-%s'.format(config_name, section_id, this.option) }, attrs), [ nodes ]) ]);
			}
			else {
				optionEl = E('div', Object.assign({ 'class': 'cbi-value', 'data-name': this.option, 'data-widget': this.__name__,
					'id': 'cbi-%s-%s-%s'.format(config_name, section_id, this.option) }, attrs), [
					this.title ? E('label', { 'class': 'cbi-value-title' }, [ this.title ]) : '',
					E('div', { 'class': 'cbi-value-field' }, [ nodes ])
				]);
			}
			const field = in_table ? optionEl.firstChild : optionEl;
			if (depends.length)
				field.classList.add('hidden');
			optionEl.addEventListener('widget-change', L.bind(this.map.checkDepends, this.map));
			dom.bindClassInstance(optionEl, this);
			return optionEl;
		},
		renderWidget(section_id, option_index, cfgvalue) {
			const value = (cfgvalue != null) ? cfgvalue : this.default, choices = this.transformChoices();
			const flat = Array.isArray(value) ? value.join(' ') : value;
			const widget = choices ? new ui.Combobox(flat, choices, this.widgetOptions(section_id, { sort: this.keylist }))
				: new ui.Textfield(flat, this.widgetOptions(section_id));
			return widget.render();
		}
	});

	const CBIDynamicList = CBIValue.extend({
		__name__: 'CBI.DynamicList',
		renderWidget(section_id, option_index, cfgvalue) {
			const value = (cfgvalue != null) ? cfgvalue : this.default;
			return new ui.DynamicList(L.toArray(value), this.transformChoices(),
				this.widgetOptions(section_id, { sort: this.keylist })).render();
		}
	});

	const CBIListValue = CBIValue.extend({
		__name__: 'CBI.ListValue',
		__init__(...args) {
			this.super('__init__', args);
			this.widget = 'select';
			this.orientation = 'horizontal';
			this.deplist = [];
		},
		renderWidget(section_id, option_index, cfgvalue) {
			return new ui.Select((cfgvalue != null) ? cfgvalue : this.default, this.transformChoices(),
				this.widgetOptions(section_id, { optional: this.optional, sort: this.keylist, datatype: null })).render();
		}
	});

	const CBIFlagValue = CBIValue.extend({
		__name__: 'CBI.FlagValue',
		__init__(...args) {
			this.super('__init__', args);
			this.enabled = '1';
			this.disabled = '0';
			this.default = this.disabled;
		},
		renderWidget(section_id, option_index, cfgvalue) {
			return new ui.Checkbox((cfgvalue != null) ? cfgvalue : this.default, {
				id: this.cbid(section_id),
				value_enabled: this.enabled,
				value_disabled: this.disabled,
				validate: L.bind(this.validate, this, section_id),
				disabled: (this.readonly != null) ? this.readonly : this.map.readonly
			}).render();
		},
		formvalue(section_id) {
			const elem = this.getUIElement(section_id);
			return (elem ? elem.isChecked() : false) ? this.enabled : this.disabled;
		},
		textvalue(section_id) {
			let cval = this.cfgvalue(section_id);
			if (cval == null)
				cval = this.default;
			return (cval == this.enabled) ? _('Yes') : _('No');
		},
		parse(section_id) {
			if (this.isActive(section_id)) {
				const fval = this.formvalue(section_id);
				if (!this.isValid(section_id))
					return Promise.reject(new TypeError(_('Option "%s" contains an invalid input value.').format(this.title || this.option)));
				if (fval == this.default && (this.optional || this.rmempty))
					return Promise.resolve(this.remove(section_id));
				return Promise.resolve(this.write(section_id, fval));
			}
			else if (!this.retain) {
				return Promise.resolve(this.remove(section_id));
			}
			return Promise.resolve();
		}
	});

	const CBIDummyValue = CBIValue.extend({
		__name__: 'CBI.DummyValue',
		renderWidget(section_id, option_index, cfgvalue) {
			const value = (cfgvalue != null) ? cfgvalue : this.default;
			return E('div', {}, [ new ui.Hiddenfield(value, { id: this.cbid(section_id) }).render(), value == null ? '' : String(value) ]);
		},
		remove() {},
		write() {}
	});

	return Class.singleton({
		__name__: 'LuCI.form',
		Map: CBIMap,
		TypedSection: CBITypedSection,
		TableSection: CBITableSection,
		GridSection: CBIGridSection,
		NamedSection: CBINamedSection,
		AbstractSection: CBIAbstractSection,
		AbstractValue: CBIAbstractValue,
		Value: CBIValue,
		DynamicList: CBIDynamicList,
		ListValue: CBIListValue,
		Flag: CBIFlagValue,
		FlagValue: CBIFlagValue,
		DummyValue: CBIDummyValue
	});
};
