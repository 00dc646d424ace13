'use strict';
/*
 * Stand-in for LuCI's client runtime (luci-base htdocs/luci-static/resources/
 * luci.js), written from its source and the LuCI JS API docs
 * (openwrt.github.io/luci/jsapi: LuCI, LuCI.baseclass, LuCI.dom, LuCI.view,
 * LuCI.poll, LuCI.rpc). What the wgagent views rely on behaves as there:
 *
 * - classes: baseclass.extend() / singleton / instantiate / isSubclass / super();
 *   a constructor runs the class's own __init__, else the nearest inherited one;
 * - L.require(name): the file <resources>/<name with . as />.js, its leading
 *   'require x [as y]' strings scanned as luci.js scans them (stopping at the first
 *   string that is neither that nor 'use strict'), its dependencies loaded first,
 *   then the source run as the body of function(window, document, L, deps...);
 *   it must return a class, whose instance is the module (a view's instance draws
 *   itself into #view);
 * - L.bind, L.resolveDefault, L.isObject, L.toArray, L.raise, L.error;
 * - dom.create (E), append, content, attr, data / class instance binding;
 * - String.prototype.format for %s %d %f %h %q %% (the others throw here, so a
 *   view that starts using one shows up in the tests); _() returns its argument;
 * - poll: add (implicit start), remove, start, stop, active, step() once a second;
 * - rpc.declare: params by position, expect, filter, reject, and the reply rules
 *   of rpc.js (a ubus status resolves as its number unless `reject`; a JSON-RPC
 *   error from the ubus gateway rejects with an RPCError).
 *
 * The ubus side answers in process (ubus.js): no HTTP. Built-in classes are
 * JavaScript factories here; only the package's own files are loaded from disk
 * (node) or over HTTP (the browser page).
 */

function createRuntime(opts) {
	const window = opts.window, document = opts.document;
	const classes = {};
	const rt = { window, document, classes, opts };

	/* --- class system (luci.js Class) */
	let superContext = null;
	const toCamelCase = (s) => s.replace(/(?:^|[. -])(.)/g, (m0, m1) => m1.toUpperCase());

	const Class = Object.assign(function() {}, {
		extend(properties) {
			const props = {
				__base__: { value: this.prototype },
				__name__: { value: properties.__name__ || 'anonymous' }
			};
			const ClassConstructor = function() {
				if (!(this instanceof ClassConstructor))
					throw new TypeError('Constructor must not be called without "new"');
				if (Object.getPrototypeOf(this).hasOwnProperty('__init__')) {
					if (typeof this.__init__ != 'function')
						throw new TypeError('Class __init__ member is not a function');
					this.__init__.apply(this, arguments);
				}
				else {
					this.super('__init__', arguments);
				}
			};
			for (const key in properties)
				if (!props[key] && properties.hasOwnProperty(key))
					props[key] = { value: properties[key], writable: true };
			ClassConstructor.prototype = Object.create(this.prototype, props);
			ClassConstructor.prototype.constructor = ClassConstructor;
			Object.assign(ClassConstructor, this);
			ClassConstructor.displayName = toCamelCase(props.__name__.value + 'Class');
			return ClassConstructor;
		},
		singleton(properties, ...args) {
			return Class.extend(properties).instantiate(args);
		},
		instantiate(args) {
			return new (Function.prototype.bind.apply(this, [ null ].concat(Array.from(args || []))))();
		},
		isSubclass(cls) {
			return cls != null && typeof cls == 'function' && cls.prototype instanceof this;
		},
		prototype: {
			varargs(args, offset, ...prepend) {
				return prepend.concat(Array.prototype.slice.call(args, offset));
			},
			super(key, callArgs) {
				if (key == null)
					return null;
				for (superContext = Object.getPrototypeOf(superContext || Object.getPrototypeOf(this));
				     superContext && !superContext.hasOwnProperty(key);
				     superContext = Object.getPrototypeOf(superContext)) { }
				if (!superContext)
					return null;
				let res = superContext[key];
				if (arguments.length > 1) {
					if (typeof res != 'function')
						throw new ReferenceError(key + ' is not a function in base class');
					if (typeof callArgs != 'object')
						callArgs = this.varargs(arguments, 1);
					try { res = res.apply(this, callArgs); }
					catch (e) { superContext = null; throw e; }
				}
				superContext = null;
				return res;
			}
		}
	});
	rt.Class = Class;

	/* --- translation and String.prototype.format */
	const _ = (s) => s;
	const N_ = (n, singular, plural) => (n == 1 ? singular : plural);

	const esc = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&#34;', '\'': '&#39;' };
	/* eslint-disable-next-line no-extend-native */
	String.prototype.format = function() {
		const args = arguments;
		let i = 0;
		return String(this).replace(/%(%|(\.\d+)?([a-zA-Z]))/g, (m, all, prec, type) => {
			if (all == '%')
				return '%';
			if (i >= args.length)
				throw new Error('format: too few arguments for ' + this);
			const v = args[i++];
			switch (type) {
			case 's': if (prec) break; return String(v);
			case 'd': if (prec) break; return String(Math.trunc(+v) || 0);
			case 'f': return (+v).toFixed(prec ? +prec.substr(1) : 6);
			case 'h': if (prec) break; return String(v).replace(/[&<>"']/g, (c) => esc[c]);
			case 'q': if (prec) break; return String(v).replace(/["'\\]/g, (c) => '\\' + c);
			}
			throw new Error('format: the stand-in has no %' + (prec || '') + type + ' (in "' + this + '")');
		});
	};

	/* --- L */
	const L = {
		env: Object.assign({ pollinterval: 5, sessionid: 'standin-session', rpctimeout: 20,
		                     resource: '/luci-static/resources', apply_rollback: 90 }, opts.env || {}),
		Class,
		bind(fn, self, ...args) { return Function.prototype.bind.apply(fn, [ self ].concat(args)); },
		isObject(v) { return v != null && typeof v == 'object'; },
		toArray(v) {
			if (v == null) return [];
			if (Array.isArray(v)) return v;
			if (typeof v == 'object') return [ v ];
			const s = String(v).trim();
			return (s == '') ? [] : s.split(/\s+/);
		},
		resolveDefault(value, defvalue) {
			return Promise.resolve(value).catch(() => defvalue);
		},
		naturalCompare(a, b) {
			return String(a).localeCompare(String(b), undefined, { numeric: true });
		},
		raise(type, fmt, ...args) {
			const msg = fmt ? String(fmt).format(...args) : 'Unspecified error';
			const e = new Error(msg);
			e.name = type || 'Error';
			throw e;
		},
		error(type, fmt, ...args) {
			try { L.raise(type, fmt, ...args); }
			catch (e) { rt.errors.push(e); throw e; }
		},
		path(prefix, parts) {
			return [ prefix || '' ].concat(Array.from(parts).map((p) => '/' + p)).join('') || '/';
		},
		url(...parts) { return L.path('/cgi-bin/luci', parts); },
		resource(...parts) { return L.path(L.env.resource, parts); },
		require(name, from) { return requireClass(name, from || []); }
	};
	rt.L = L;
	rt.errors = [];

	/* --- dom (LuCI.dom) */
	const registry = {};
	const dom = {
		elem(e) { return e != null && typeof e == 'object' && 'nodeType' in e; },
		parse() { throw new Error('stand-in: dom.parse (markup strings) is not modelled'); },
		matches(node, sel) { return dom.elem(node) && node.matches ? node.matches(sel) : false; },
		parent(node, sel) { return (dom.elem(node) && node.closest) ? node.closest(sel) : null; },
		append(node, children) {
			if (!dom.elem(node))
				return null;
			if (Array.isArray(children)) {
				for (const c of children)
					if (dom.elem(c))
						node.appendChild(c);
					else if (c !== null && c !== undefined)
						node.appendChild(document.createTextNode('' + c));
				return node.lastChild;
			}
			if (typeof children == 'function')
				return dom.append(node, children(node));
			if (dom.elem(children))
				return node.appendChild(children);
			if (children !== null && children !== undefined) {
				node.innerHTML = '' + children;
				return node.lastChild;
			}
			return null;
		},
		content(node, children) {
			if (!dom.elem(node))
				return null;
			for (const d of node.querySelectorAll('[data-idref]'))
				delete registry[d.getAttribute('data-idref')];
			while (node.firstChild)
				node.removeChild(node.firstChild);
			return dom.append(node, children);
		},
		attr(node, key, val) {
			if (!dom.elem(node))
				return null;
			let attr = null;
			if (typeof key == 'object' && key !== null) attr = key;
			else if (typeof key == 'string') attr = { [key]: val };
			for (const k in attr) {
				if (!attr.hasOwnProperty(k) || attr[k] == null)
					continue;
				if (typeof attr[k] == 'function') node.addEventListener(k, attr[k]);
				else if (typeof attr[k] == 'object') node.setAttribute(k, JSON.stringify(attr[k]));
				else node.setAttribute(k, attr[k]);
			}
		},
		create(html, attr, data) {
			let elem;
			if (!(attr instanceof Object) || Array.isArray(attr))
				data = attr, attr = null;
			if (Array.isArray(html)) {
				elem = document.createDocumentFragment();
				for (const h of html)
					elem.appendChild(dom.create(h));
			}
			else if (dom.elem(html)) elem = html;
			else if (html.charCodeAt(0) === 60) elem = dom.parse(html);
			else elem = document.createElement(html);
			dom.attr(elem, attr);
			dom.append(elem, data);
			return elem;
		},
		data(node, key, val) {
			let id = node.getAttribute('data-idref');
			if (arguments.length > 2 && key != null && val != null) {
				if (id == null) {
					do { id = Math.floor(Math.random() * 0xffffffff).toString(16); } while (registry.hasOwnProperty(id));
					node.setAttribute('data-idref', id);
					registry[id] = {};
				}
				return (registry[id][key] = val);
			}
			if (arguments.length == 2)
				return (id != null && registry[id]) ? registry[id][key] : null;
			return (id != null) ? registry[id] : null;
		},
		bindClassInstance(node, inst) { return dom.data(node, '_class', inst); },
		findClassInstance(node) {
			let inst = null;
			do {
				inst = dom.data(node, '_class');
				node = node.parentNode;
			} while (!(inst instanceof Class) && node != null && node.nodeType === 1);
			return inst || null;
		},
		callClassMethod(node, method, ...args) {
			const inst = dom.findClassInstance(node);
			return (inst == null || typeof inst[method] != 'function') ? null : inst[method](...args);
		},
		isEmpty(node) { return !node.firstElementChild; }
	};
	const E = (...args) => dom.create(...args);
	L.dom = dom;
	rt.dom = dom;

	/* the views use E, _ and N_ as globals, as LuCI's pages do: properties of the
	 * browser's window, and under node of the global object (a view's free names
	 * resolve there, whatever window the factory is given) */
	for (const g of (window === globalThis) ? [ window ] : [ window, globalThis ])
		Object.assign(g, { E, _, N_, L });
	rt.E = E;

	/* --- poll (LuCI.poll) */
	const poll = Class.singleton({
		__name__: 'LuCI.poll',
		queue: [],
		add(fn, interval) {
			if (interval == null || interval <= 0)
				interval = L.env.pollinterval;
			if (isNaN(interval) || typeof fn != 'function')
				throw new TypeError('Invalid argument to LuCI.poll.add()');
			if (this.queue.some((e) => e.fn === fn))
				return false;
			this.queue.push({ r: true, i: interval >>> 0, fn });
			if (this.tick != null && !this.active())
				this.start();
			return true;
		},
		remove(fn) {
			if (typeof fn != 'function')
				throw new TypeError('Invalid argument to LuCI.poll.remove()');
			const len = this.queue.length;
			this.queue = this.queue.filter((e) => e.fn !== fn);
			if (!this.queue.length && this.stop())
				this.tick = 0;
			return this.queue.length != len;
		},
		start() {
			if (this.active())
				return false;
			this.tick = 0;
			if (this.queue.length) {
				/* node's tests step by hand; the browser page ticks every second */
				this.timer = opts.timers ? window.setInterval(() => this.step(), 1000) : 'manual';
				this.step();
			}
			return true;
		},
		stop() {
			if (!this.active())
				return false;
			if (this.timer !== 'manual')
				window.clearInterval(this.timer);
			delete this.timer;
			delete this.tick;
			return true;
		},
		/* one tick: each due function that is not still running; its promise */
		step() {
			const running = [];
			for (const e of this.queue) {
				if ((this.tick % e.i) != 0 || !e.r)
					continue;
				e.r = false;
				running.push(Promise.resolve(e.fn()).finally(() => { e.r = true; }));
			}
			this.tick = (this.tick + 1) % Math.pow(2, 32);
			return Promise.all(running);
		},
		active() { return this.timer != null; }
	});
	rt.poll = poll;

	/* --- rpc (LuCI.rpc) over the in-process ubus of ubus.js */
	const statusText = {
		0: 'Command OK', 1: 'Invalid command', 2: 'Invalid argument', 3: 'Method not found',
		4: 'Resource not found', 5: 'No data received', 6: 'Permission denied', 7: 'Request timeout',
		8: 'Not supported', 9: 'Unspecified error', 10: 'Connection lost'
	};
	let rpcId = 1;
	const rpc = Class.singleton({
		__name__: 'LuCI.rpc',
		getStatusText(code) { return _(statusText[code] || 'Unknown error code'); },
		getSessionID() { return L.env.sessionid; },
		declare(options) {
			return (...args) => new Promise((resolve, reject) => {
				const params = {};
				let p = 0;
				if (Array.isArray(options.params))
					for (; p < options.params.length; p++)
						params[options.params[p]] = args[p];
				const priv = [ undefined, undefined ].concat(args.slice(p));
				const msg = rt.ubus.call(L.env.sessionid, options.object, options.method,
					JSON.parse(JSON.stringify(params)), rpcId++);
				Promise.resolve(msg).then((reply) => {
					if (L.isObject(reply.error) && reply.error.code && reply.error.message)
						L.raise('RPCError', 'RPC call to %s/%s failed with error %d: %s',
							options.object, options.method, reply.error.code, reply.error.message);
					let ret = null;
					if (Array.isArray(reply.result)) {
						if (options.reject && reply.result[0] !== 0)
							L.raise('RPCError', 'RPC call to %s/%s failed with ubus code %d: %s',
								options.object, options.method, reply.result[0], this.getStatusText(reply.result[0]));
						ret = (reply.result.length > 1) ? reply.result[1] : reply.result[0];
					}
					if (options.expect) {
						const type = Object.prototype.toString;
						for (const key in options.expect) {
							if (ret != null && key != '')
								ret = ret[key];
							if (ret == null || type.call(ret) != type.call(options.expect[key]))
								ret = options.expect[key];
							break;
						}
					}
					if (typeof options.filter == 'function') {
						priv[0] = ret;
						priv[1] = params;
						ret = options.filter.apply(this, priv);
					}
					resolve(ret);
				}).catch(reject);
			});
		}
	});
	rt.rpc = rpc;

	/* --- require */
	const requirematch = /^require[ \t]+(\S+)(?:[ \t]+as[ \t]+([a-zA-Z_]\S*))?$/;
	const strictmatch = /^use[ \t]+strict$/;

	/* luci.js compileClass: the leading string literals of a class file */
	function scanRequires(source) {
		const deps = [];
		for (let i = 0, off = -1, quote = -1, escd = false; i < source.length; i++) {
			const chr = source.charCodeAt(i);
			if (escd) escd = false;
			else if (chr == 92) escd = true;
			else if (chr == quote) {
				const s = source.substring(off, i), m = requirematch.exec(s);
				if (m)
					deps.push([ m[1], m[2] || m[1].replace(/[^a-zA-Z0-9_]/g, '_') ]);
				else if (!strictmatch.exec(s))
					break;
				off = -1;
				quote = -1;
			}
			else if (quote == -1 && (chr == 34 || chr == 39)) {
				off = i + 1;
				quote = chr;
			}
		}
		return deps;
	}
	rt.scanRequires = scanRequires;

	function requireClass(name, from) {
		if (classes[name] != null) {
			if (from.indexOf(name) != -1)
				L.raise('DependencyError', 'Circular dependency: class "%s" depends on "%s"', name, from.join('" which depends on "'));
			return Promise.resolve(classes[name]);
		}
		if (rt.builtins[name]) {
			classes[name] = rt.builtins[name]();
			return Promise.resolve(classes[name]);
		}
		const path = name.replace(/\./g, '/') + '.js';
		from = [ name ].concat(from);
		classes[name] = Promise.resolve(opts.readResource(path)).then((source) => {
			const deps = scanRequires(source);
			return Promise.all(deps.map((d) => requireClass(d[0], from))).then((instances) => {
				const factory = new Function([ 'window', 'document', 'L' ].concat(deps.map((d) => d[1])).join(','),
					source + '\n//# sourceURL=' + path);
				const cls = factory.apply(factory, [ window, document, L ].concat(instances));
				if (!Class.isSubclass(cls))
					L.error('TypeError', '"%s" factory yields invalid constructor', name);
				const instance = new cls();
				classes[name] = instance;
				rt.loaded.push(name);
				return instance;
			});
		});
		return classes[name];
	}
	rt.loaded = [];

	return rt;
}

module.exports = { createRuntime };
