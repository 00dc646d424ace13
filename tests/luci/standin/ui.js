'use strict';
/*
 * Stand-ins for LuCI.ui (luci-base htdocs/luci-static/resources/ui.js) and the
 * widgets LuCI.form builds its options from, written from ui.js and the API docs
 * (LuCI.ui, LuCI.ui.AbstractElement, Textfield, Combobox, Select, Checkbox,
 * DynamicList, Hiddenfield, changes):
 *
 * - a widget renders a frame whose id is options.id (form's cbid) bound to the
 *   widget instance, which is how LuCI.form finds it again (getUIElement);
 * - getValue() is what the user left in it: a string, for a DynamicList the list;
 *   a Checkbox gives value_enabled or value_disabled;
 * - validation is ui.addValidator's: options.datatype (default 'string'),
 *   options.optional, options.validate; a DynamicList's items were each checked
 *   when added, so all of them are checked here;
 * - createHandlerFn(ctx, fn, args...) disables the clicked element while fn's
 *   promise runs; here the handler also returns that promise, for the tests;
 * - addNotification(title, children, classes...) puts an alert at the top of
 *   #maincontent (and in rt.notifications); showModal/hideModal; changes.apply()
 *   is `uci apply` with rollback, then `uci confirm`.
 */

module.exports = function makeUi(rt) {
	const { Class, dom, E, L } = rt;
	const validation = rt.validation;

	const AbstractElement = Class.extend({
		__name__: 'LuCI.ui.AbstractElement',
		__init__(value, options) {
			this.value = value;
			this.options = Object.assign({ optional: true }, options);
			this.validator = validation.create(this.options.datatype || 'string', !!this.options.optional,
				this.options.validate);
			this.error = null;
		},
		getValue() { return this.value; },
		setValue(v) { this.value = v; if (this.node) this.node.setAttribute('data-value', JSON.stringify(v)); },
		isChanged() { return this.changed === true; },
		/* the values addValidator saw */
		checkedValues() { return [ this.getValue() ]; },
		triggerValidation() {
			this.error = null;
			for (const v of this.checkedValues()) {
				const r = this.validator.check(v);
				if (!r.valid) {
					this.error = r.error;
					break;
				}
			}
			if (this.node)
				this.node.classList.toggle('cbi-input-invalid', this.error != null);
			return this.error == null;
		},
		isValid() { return this.triggerValidation(); },
		getValidationError() { return this.error || ''; },
		/* the user typed or chose v */
		userSet(v) {
			this.setValue(v);
			this.changed = true;
			if (this.node)
				this.node.dispatchEvent(rt.window.CustomEvent
					? new rt.window.CustomEvent('widget-change', { bubbles: true })
					: { type: 'widget-change', bubbles: true });
		},
		render() {
			this.node = E('div', { 'id': this.options.id, 'class': 'cbi-widget', 'data-widget': this.__name__,
			                       'data-value': JSON.stringify(this.getValue()) });
			if (this.options.disabled)
				this.node.setAttribute('disabled', '');
			dom.bindClassInstance(this.node, this);
			return this.node;
		}
	});

	const Textfield = AbstractElement.extend({
		__name__: 'LuCI.ui.Textfield',
		__init__(value, options) {
			this.super('__init__', [ value == null ? '' : String(value), options ]);
		},
		getValue() { return this.value == null ? '' : String(this.value); }
	});

	const Hiddenfield = Textfield.extend({ __name__: 'LuCI.ui.Hiddenfield' });

	const Combobox = Textfield.extend({
		__name__: 'LuCI.ui.Combobox',
		__init__(value, choices, options) {
			this.choices = choices || {};
			this.super('__init__', [ value, options ]);
		}
	});

	const Select = AbstractElement.extend({
		__name__: 'LuCI.ui.Select',
		__init__(value, choices, options) {
			this.choices = choices || {};
			const keys = Object.keys(this.choices);
			/* a select shows the first choice when its value is none of them */
			if ((value == null || !(value in this.choices)) && !(options && options.optional))
				value = keys.length ? keys[0] : '';
			this.super('__init__', [ value == null ? '' : String(value), Object.assign({}, options, { datatype: null }) ]);
		},
		userSet(v) {
			if (!(v in this.choices))
				throw new Error('stand-in: "' + v + '" is not a choice of ' + this.options.id);
			this.super('userSet', [ v ]);
		}
	});

	const Checkbox = AbstractElement.extend({
		__name__: 'LuCI.ui.Checkbox',
		__init__(value, options) {
			this.super('__init__', [ value, Object.assign({ value_enabled: '1', value_disabled: '0' }, options, { datatype: null }) ]);
			this.checked = (value == this.options.value_enabled);
		},
		isChecked() { return this.checked; },
		getValue() { return this.checked ? this.options.value_enabled : this.options.value_disabled; },
		setValue(v) { this.checked = (v === true || v == this.options.value_enabled); },
		userSet(v) { this.setValue(v); this.changed = true; }
	});

	const DynamicList = AbstractElement.extend({
		__name__: 'LuCI.ui.DynamicList',
		__init__(values, choices, options) {
			this.choices = choices || {};
			this.super('__init__', [ L.toArray(values).slice(), options ]);
		},
		getValue() { return this.value.slice(); },
		checkedValues() { return this.value.length ? this.value : [ '' ]; },
		userSet(v) { this.super('userSet', [ L.toArray(v).slice() ]); }
	});

	const notifications = [];
	rt.notifications = notifications;

	let applyCall = null, confirmCall = null;

	const ui = Class.singleton({
		__name__: 'LuCI.ui',
		AbstractElement, Textfield, Hiddenfield, Combobox, Select, Checkbox, DynamicList,

		addNotification(title, children, ...classes) {
			const node = E('div', { 'class': 'alert-message fade-in' }, [
				title ? E('h4', [ title ]) : '',
				E('div', {}, Array.isArray(children) ? children : [ children ])
			]);
			classes.forEach((c) => node.classList.add(c));
			notifications.push({ title, text: node.textContent, classes, node });
			const mc = rt.document.getElementById('maincontent');
			if (mc)
				mc.insertBefore(node, mc.firstChild);
			return node;
		},

		showModal(title, children) {
			rt.modal = { title, node: E('div', { 'class': 'modal' }, [ E('h4', [ title ]) ].concat(children || [])) };
			return rt.modal.node;
		},

		hideModal() { rt.modal = null; },

		createHandlerFn(ctx, fn, ...args) {
			if (typeof fn == 'string')
				fn = ctx[fn];
			if (typeof fn != 'function')
				return null;
			return function(ev) {
				const t = ev.currentTarget;
				t.classList.add('spinning');
				t.disabled = true;
				return Promise.resolve(fn.apply(ctx, args.concat([ ev ]))).finally(() => {
					t.classList.remove('spinning');
					t.disabled = false;
				});
			};
		},

		tabs: {
			initTabGroup() {},
			updateTabs() {}
		},

		changes: {
			apply(checked) {
				applyCall = applyCall || rt.rpc.declare({ object: 'uci', method: 'apply', params: [ 'timeout', 'rollback' ] });
				confirmCall = confirmCall || rt.rpc.declare({ object: 'uci', method: 'confirm' });
				return applyCall(L.env.apply_rollback, !!checked).then(() => confirmCall());
			}
		}
	});

	return ui;
};
