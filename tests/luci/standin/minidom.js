'use strict';
/*
 * The little of the DOM that the views and the LuCI stand-in touch, for node (the
 * browser render uses the real one): elements with attributes, classList and
 * children, text nodes, fragments, click events, and querySelector(All) for
 * simple selectors (tag, #id, .class, [attr], [attr="value"], joined, with the
 * descendant combinator). innerHTML takes plain text only: a view that hands
 * LuCI's dom.append() a markup string fails here instead of passing unseen.
 */

class Node {
	constructor(doc) {
		this.ownerDocument = doc;
		this.parentNode = null;
		this.childNodes = [];
	}

	get firstChild() { return this.childNodes[0] || null; }
	get lastChild() { return this.childNodes[this.childNodes.length - 1] || null; }

	get nextSibling() {
		const p = this.parentNode;
		return p ? p.childNodes[p.childNodes.indexOf(this) + 1] || null : null;
	}

	get textContent() {
		return this.childNodes.map((c) => c.textContent).join('');
	}

	set textContent(text) {
		this.childNodes.forEach((c) => { c.parentNode = null; });
		this.childNodes = [];
		if (text !== '' && text != null)
			this.appendChild(this.ownerDocument.createTextNode(String(text)));
	}

	appendChild(child) {
		return this.insertBefore(child, null);
	}

	insertBefore(child, ref) {
		const kids = (child.nodeType === 11) ? child.childNodes.slice() : [ child ];
		for (const k of kids) {
			if (k.parentNode)
				k.parentNode.removeChild(k);
			const at = ref ? this.childNodes.indexOf(ref) : -1;
			if (at < 0)
				this.childNodes.push(k);
			else
				this.childNodes.splice(at, 0, k);
			k.parentNode = this;
		}
		return child;
	}

	removeChild(child) {
		const at = this.childNodes.indexOf(child);
		if (at < 0)
			throw new Error('minidom: removeChild of a node that is not a child');
		this.childNodes.splice(at, 1);
		child.parentNode = null;
		return child;
	}

	contains(node) {
		for (let n = node; n; n = n.parentNode)
			if (n === this)
				return true;
		return false;
	}
}

class Text extends Node {
	constructor(doc, data) {
		super(doc);
		this.nodeType = 3;
		this.data = data;
	}

	get textContent() { return this.data; }
	set textContent(t) { this.data = String(t); }
}

class Fragment extends Node {
	constructor(doc) {
		super(doc);
		this.nodeType = 11;
	}

	querySelectorAll(sel) { return queryAll(this, sel); }
	querySelector(sel) { return queryAll(this, sel)[0] || null; }
}

class ClassList {
	constructor(el) { this.el = el; }
	_list() { return (this.el.getAttribute('class') || '').split(/\s+/).filter((c) => c); }
	_set(list) { this.el.setAttribute('class', list.join(' ')); }
	contains(c) { return this._list().indexOf(c) > -1; }
	add(...cs) { const l = this._list(); cs.forEach((c) => { if (l.indexOf(c) < 0) l.push(c); }); this._set(l); }
	remove(...cs) { this._set(this._list().filter((c) => cs.indexOf(c) < 0)); }
	toggle(c, force) {
		const on = (force === undefined) ? !this.contains(c) : !!force;
		on ? this.add(c) : this.remove(c);
		return on;
	}
}

class Element extends Node {
	constructor(doc, tag) {
		super(doc);
		this.nodeType = 1;
		this.tagName = tag.toUpperCase();
		this.attributes = new Map();
		this.listeners = {};
		this.classList = new ClassList(this);
		this.style = {};
	}

	get id() { return this.getAttribute('id') || ''; }
	set id(v) { this.setAttribute('id', v); }
	get className() { return this.getAttribute('class') || ''; }
	set className(v) { this.setAttribute('class', v); }
	get children() { return this.childNodes.filter((c) => c.nodeType === 1); }
	get firstElementChild() { return this.children[0] || null; }

	get disabled() { return this.hasAttribute('disabled'); }
	set disabled(v) { v ? this.setAttribute('disabled', '') : this.removeAttribute('disabled'); }

	set innerHTML(html) {
		if (/[<&]/.test(String(html)))
			throw new Error('minidom: innerHTML with markup: ' + html);
		this.textContent = html;
	}

	getAttribute(k) { return this.attributes.has(k) ? this.attributes.get(k) : null; }
	setAttribute(k, v) { this.attributes.set(k, String(v)); }
	hasAttribute(k) { return this.attributes.has(k); }
	removeAttribute(k) { this.attributes.delete(k); }

	addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
	removeEventListener(type, fn) { this.listeners[type] = (this.listeners[type] || []).filter((f) => f !== fn); }

	dispatchEvent(ev) {
		ev.target = ev.target || this;
		for (let n = this; n; n = n.parentNode) {
			ev.currentTarget = n;
			for (const fn of (n.listeners && n.listeners[ev.type]) || [])
				fn.call(n, ev);
			if (!ev.bubbles)
				break;
		}
		return true;
	}

	click() {
		const results = [];
		const ev = { type: 'click', bubbles: true, target: this, preventDefault() {}, stopPropagation() {} };
		for (const fn of this.listeners.click || []) {
			ev.currentTarget = this;
			results.push(fn.call(this, ev));
		}
		return results;
	}

	matches(sel) {
		return sel.split(',').some((s) => matchChain(this, parseChain(s.trim())));
	}

	closest(sel) {
		for (let n = this; n && n.nodeType === 1; n = n.parentNode)
			if (n.matches(sel))
				return n;
		return null;
	}

	querySelectorAll(sel) { return queryAll(this, sel); }
	querySelector(sel) { return queryAll(this, sel)[0] || null; }
}

/* "div.a#b[x=\"y\"] td" -> [[compound], [compound]] (descendant chain) */
function parseChain(sel) {
	return sel.split(/\s+/).filter((p) => p).map((part) => {
		const c = { tag: null, id: null, classes: [], attrs: [] };
		const re = /([a-zA-Z][a-zA-Z0-9-]*)|#([\w.-]+)|\.([\w-]+)|\[([\w-]+)(?:=(?:"([^"]*)"|'([^']*)'|([^\]]*)))?\]|(\S)/g;
		let m;
		while ((m = re.exec(part)) !== null) {
			if (m[8])
				throw new Error('minidom: unsupported selector ' + sel);
			if (m[1]) c.tag = m[1].toUpperCase();
			else if (m[2]) c.id = m[2];
			else if (m[3]) c.classes.push(m[3]);
			else if (m[4]) c.attrs.push([ m[4], m[5] !== undefined ? m[5] : m[6] !== undefined ? m[6] : m[7] ]);
		}
		return c;
	});
}

function matchOne(el, c) {
	if (el.nodeType !== 1) return false;
	if (c.tag && el.tagName !== c.tag) return false;
	if (c.id && el.id !== c.id) return false;
	for (const k of c.classes) if (!el.classList.contains(k)) return false;
	for (const [ k, v ] of c.attrs) {
		if (!el.hasAttribute(k)) return false;
		if (v !== undefined && el.getAttribute(k) !== v) return false;
	}
	return true;
}

function matchChain(el, chain) {
	if (!matchOne(el, chain[chain.length - 1]))
		return false;
	let i = chain.length - 2;
	for (let n = el.parentNode; n && i >= 0; n = n.parentNode)
		if (n.nodeType === 1 && matchOne(n, chain[i]))
			i--;
	return i < 0;
}

function queryAll(root, sel) {
	const chains = sel.split(',').map((s) => parseChain(s.trim()));
	const out = [];
	const walk = (n) => {
		for (const c of n.childNodes) {
			if (c.nodeType === 1 && chains.some((ch) => matchChain(c, ch)))
				out.push(c);
			walk(c);
		}
	};
	walk(root);
	return out;
}

class Document extends Node {
	constructor() {
		super(null);
		this.ownerDocument = this;
		this.nodeType = 9;
		this.documentElement = this.createElement('html');
		this.body = this.createElement('body');
		this.documentElement.appendChild(this.body);
		this.childNodes = [ this.documentElement ];
		this.documentElement.parentNode = this;
		this.listeners = {};
	}

	createElement(tag) { return new Element(this, tag); }
	createTextNode(t) { return new Text(this, String(t)); }
	createDocumentFragment() { return new Fragment(this); }
	getElementById(id) { return queryAll(this, '#' + id)[0] || null; }
	querySelectorAll(sel) { return queryAll(this, sel); }
	querySelector(sel) { return queryAll(this, sel)[0] || null; }
	addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
	dispatchEvent(ev) { (this.listeners[ev.type] || []).forEach((fn) => fn(ev)); return true; }
}

module.exports = { Document };
