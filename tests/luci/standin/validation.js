'use strict';
/*
 * Stand-in for LuCI's datatype validation (LuCI.validation, luci-base
 * htdocs/luci-static/resources/validation.js), written from its source and the
 * "Datatypes" list of its API docs: the same expression syntax (compile(): names,
 * numbers, quoted strings, nested argument lists, backslash escapes) and the same
 * verdict for each datatype it implements, which are the ones the wgagent views use
 * plus the ones they build on. An unknown datatype is a SyntaxError, as there.
 *
 * What a widget does with it (ui.js addValidator -> Validator.validate): an empty
 * value is valid only when the field is optional and then still goes to the
 * option's validate() function; a non-empty one must pass the datatype first, then
 * validate(); the error shown is "Expecting: <datatype's wording>" or validate()'s
 * own string.
 */

function parseInteger(x) { return /^-?\d+$/.test(x) ? +x : NaN; }
function parseDecimal(x) { return /^-?\d+(?:\.\d+)?$/.test(x) ? +x : NaN; }

function parseIPv4(x) {
	const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(x);
	if (!m || m.slice(1).some((o) => +o > 255))
		return null;
	return m.slice(1).map(Number);
}

/* validation.js parseIPv6: '::' once, up to 8 words of <= 4 hex digits, an IPv4
 * tail; no scope id */
function parseIPv6(x) {
	const m4 = /^([a-fA-F0-9:]+):(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(x);
	if (m4) {
		const v4 = parseIPv4(m4[2]);
		if (!v4)
			return null;
		x = m4[1] + ':' + (v4[0] * 256 + v4[1]).toString(16) + ':' + (v4[2] * 256 + v4[3]).toString(16);
	}
	if (!/^[a-fA-F0-9:]+$/.test(x))
		return null;
	const ps = x.split(/::/);
	if (ps.length > 2)
		return null;
	const prefix = (ps[0] || '0').split(/:/);
	const suffix = ps.length > 1 ? (ps[1] || '0').split(/:/) : [];
	if (suffix.length ? (prefix.length + suffix.length > 7)
	                  : ((ps.length < 2 && prefix.length < 8) || prefix.length > 8))
		return null;
	const words = [];
	for (const w of prefix) {
		if (w.length > 4 || isNaN(parseInt(w, 16)))
			return null;
		words.push(parseInt(w, 16));
	}
	for (let i = 0; i < 8 - prefix.length - suffix.length; i++)
		words.push(0);
	for (const w of suffix) {
		if (w.length > 4 || isNaN(parseInt(w, 16)))
			return null;
		words.push(parseInt(w, 16));
	}
	return words;
}

function makeFactory(_) {
	const types = {
		integer() { return this.assert(!isNaN(parseInteger(this.value)), _('valid integer value')); },
		uinteger() { return this.assert(parseInteger(this.value) >= 0, _('positive integer value')); },
		float() { return this.assert(!isNaN(parseDecimal(this.value)), _('valid decimal value')); },
		ufloat() { return this.assert(parseDecimal(this.value) >= 0, _('positive decimal value')); },

		ipaddr(nomask) {
			return this.assert(this.apply('ip4addr', null, [ nomask ]) || this.apply('ip6addr', null, [ nomask ]),
				nomask ? _('valid IP address') : _('valid IP address or prefix'));
		},
		ip4addr(nomask) {
			const re = nomask ? /^(\d+\.\d+\.\d+\.\d+)$/ : /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+\.\d+\.\d+\.\d+)|\/(\d{1,2}))?$/;
			const m = this.value.match(re);
			return this.assert(!!(m && parseIPv4(m[1]) && (m[2] ? parseIPv4(m[2]) : (m[3] ? this.apply('ip4prefix', m[3]) : true))),
				nomask ? _('valid IPv4 address') : _('valid IPv4 address or network'));
		},
		ip6addr(nomask) {
			const re = nomask ? /^([0-9a-fA-F:.]+)$/ : /^([0-9a-fA-F:.]+)(?:\/(\d{1,3}))?$/;
			const m = this.value.match(re);
			return this.assert(!!(m && parseIPv6(m[1]) && (m[2] ? this.apply('ip6prefix', m[2]) : true)),
				nomask ? _('valid IPv6 address') : _('valid IPv6 address or prefix'));
		},
		ip4prefix() { return this.assert(!isNaN(this.value) && this.value >= 0 && this.value <= 32, _('valid IPv4 prefix value (0-32)')); },
		ip6prefix() { return this.assert(!isNaN(this.value) && this.value >= 0 && this.value <= 128, _('valid IPv6 prefix value (0-128)')); },

		cidr(negative) {
			return this.assert(this.apply('cidr4', null, [ negative ]) || this.apply('cidr6', null, [ negative ]), _('valid IPv4 or IPv6 CIDR'));
		},
		cidr4(negative) {
			const m = this.value.match(/^(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\/(-)?(\d{1,2})$/);
			return this.assert(!!(m && parseIPv4(m[1]) && (negative || !m[2]) && this.apply('ip4prefix', m[3])), _('valid IPv4 CIDR'));
		},
		cidr6(negative) {
			const m = this.value.match(/^([0-9a-fA-F:.]+)\/(-)?(\d{1,3})$/);
			return this.assert(!!(m && parseIPv6(m[1]) && (negative || !m[2]) && this.apply('ip6prefix', m[3])), _('valid IPv6 CIDR'));
		},

		port() {
			const p = parseInteger(this.value);
			return this.assert(p >= 0 && p <= 65535, _('valid port value'));
		},

		uciname() { return this.assert(/^[a-zA-Z0-9_]+$/.test(this.value), _('valid UCI identifier')); },

		netdevname() {
			const v = this.value;
			if (v == '.' || v == '..')
				return this.assert(false, _('valid network device name, not "." or ".."'));
			return this.assert(/^[^:\/%\s]{1,15}$/.test(v), _('valid network device name between 1 and 15 characters not containing ":", "/", "%" or spaces'));
		},

		range(min, max) {
			const v = parseDecimal(this.value);
			return this.assert(v >= +min && v <= +max, _('value between %f and %f').format(min, max));
		},
		min(min) { return this.assert(parseDecimal(this.value) >= +min, _('value greater or equal to %f').format(min)); },
		max(max) { return this.assert(parseDecimal(this.value) <= +max, _('value smaller or equal to %f').format(max)); },

		or() {
			const errors = [];
			for (let i = 0; i < arguments.length; i += 2) {
				if (typeof arguments[i] != 'function') {
					if (arguments[i] == this.value)
						return this.assert(true);
					errors.push('"%s"'.format(arguments[i]));
					i--;
				}
				else if (arguments[i].apply(this, arguments[i + 1])) {
					return this.assert(true);
				}
				else {
					errors.push(this.error);
				}
			}
			return this.assert(false, _('One of the following: %s').format('\n - ' + errors.join('\n - ')));
		},

		and() {
			for (let i = 0; i < arguments.length; i += 2) {
				if (typeof arguments[i] != 'function') {
					if (arguments[i] != this.value)
						return this.assert(false, '"%s"'.format(arguments[i]));
					i--;
				}
				else if (!arguments[i].apply(this, arguments[i + 1])) {
					return this.assert(false, this.error);
				}
			}
			return this.assert(true);
		},

		list(sub, subargs) {
			const tokens = this.value.match(/[^ \t]+/g) || [];
			for (const t of tokens)
				if (!this.apply(sub, t, subargs))
					return this.assert(false, this.error);
			return this.assert(true);
		},

		string() { return true; }
	};

	/* compile(): "and(uinteger,range(1,5))" -> [fn, [args...]] as validation.js builds it */
	function compile(code) {
		let pos = 0, esc = false, depth = 0;
		const stack = [];
		code += ',';
		for (let i = 0; i < code.length; i++) {
			if (esc) { esc = false; continue; }
			const c = code.charCodeAt(i);
			if (c == 92) { esc = true; continue; }
			if (c == 40 || c == 44) {
				if (depth <= 0) {
					if (pos < i) {
						const label = code.substring(pos, i).replace(/\\(.)/g, '$1').replace(/^[ \t]+|[ \t]+$/g, '');
						if (label && !isNaN(label))
							stack.push(parseFloat(label));
						else if (/^(['"]).*\1$/.test(label))
							stack.push(label.replace(/^(['"])(.*)\1$/, '$2'));
						else if (typeof types[label] == 'function')
							stack.push(types[label], null);
						else
							throw new SyntaxError('Unhandled token "' + label + '"');
					}
					pos = i + 1;
				}
				depth += (c == 40);
			}
			else if (c == 41) {
				if (--depth <= 0) {
					if (typeof stack[stack.length - 2] != 'function')
						throw new SyntaxError('Argument list follows non-function');
					stack[stack.length - 1] = compile(code.substring(pos, i));
					pos = i + 1;
				}
			}
		}
		return stack;
	}

	class Validator {
		constructor(type, optional, vfunc) {
			this.vstack = compile(type || 'string');
			this.optional = optional;
			this.vfunc = vfunc;
			this.error = null;
		}

		assert(cond, message) {
			this.error = cond ? null : message;
			return !!cond;
		}

		apply(name, value, args) {
			const fn = (typeof name == 'function') ? name : types[name];
			if (typeof fn != 'function')
				return false;
			if (value != null)
				this.value = value;
			return fn.apply(this, args);
		}

		/* Validator.validate() on a field holding `value`: {valid, error} */
		check(value) {
			this.value = (value != null) ? String(value) : '';
			this.error = null;
			let valid = (this.value.length === 0)
				? this.assert(this.optional, _('non-empty value'))
				: this.vstack[0].apply(this, this.vstack[1]);
			if (valid !== true)
				return { valid: false, error: _('Expecting: %s').format(this.error) };
			if (typeof this.vfunc == 'function') {
				valid = this.vfunc(this.value);
				if (valid !== true)
					return { valid: false, error: String(valid) };
			}
			return { valid: true, error: null };
		}
	}

	return {
		types,
		compile,
		create(type, optional, vfunc) { return new Validator(type, optional, vfunc); }
	};
}

module.exports = { makeFactory, parseIPv4, parseIPv6 };
