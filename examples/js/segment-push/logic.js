// segment-push's logic, in plain JavaScript: what to send to whom. No host capability is
// used here, so node's test runner tests it natively (logic.test.js); app.js sends.

/** The placeholders a template may name. */
export const PLACEHOLDERS = ['campaign', 'code', 'value', 'user', 'position', 'expires'];

/** The settings a campaign file may give, with their defaults. */
export const DEFAULTS = {
  title: 'A coupon for you: {campaign}',
  body: '{code} is yours: {value} off.',
  link: '',
  currency: '',
  email_fallback: 'true',
};

/** The age groups a storefront records (crates/core/src/user.rs): the segments. */
export const SEGMENTS = ['under_20', '20s', '30s', '40s', '50s', '60_plus'];

/** A template's segment-specific override is `title.<segment>` or `body.<segment>`. */
const OVERRIDE = /^(title|body)\.(.*)$/;

/** At most this many bytes (UTF-8) in a setting. */
export const MAX_SETTING = 1000;

/**
 * At most this many bytes (UTF-8) in a rendered title and body: within the host's limits on
 * a push (4,000 bytes for title, body and data) and an email subject (998 bytes), whatever
 * the settings and the event hold.
 */
export const MAX_TITLE = 200;
export const MAX_BODY = 1500;
export const MAX_LINK = 1000;

/**
 * Checks the plugin's settings ([[key, value], ...], as the host passes them). Returns an
 * error message, or undefined when they are usable.
 */
export function checkSettings(pairs) {
  for (const [key, value] of pairs) {
    if (!(key in DEFAULTS) && !OVERRIDE.test(key)) {
      return `unknown setting ${JSON.stringify(key)}; known: ${Object.keys(DEFAULTS).join(', ')}, ` +
        'and title.<segment> or body.<segment> (a segment is an age group, e.g. body.20s)';
    }
    const segment = OVERRIDE.exec(key)?.[2];
    if (segment !== undefined && !SEGMENTS.includes(segment)) {
      return `${key}: unknown segment ${JSON.stringify(segment)}; the segments are the age groups ` +
        SEGMENTS.join(', ');
    }
    if (utf8Length(value) > MAX_SETTING) return `${key}: at most ${MAX_SETTING} bytes`;
    if (key === 'email_fallback' && value !== 'true' && value !== 'false') {
      return `email_fallback must be true or false, not ${JSON.stringify(value)}`;
    }
    if (key === 'currency' && !/^([A-Z]{3})?$/.test(value)) {
      return `currency must be an ISO 4217 code such as KRW or EUR, not ${JSON.stringify(value)}`;
    }
    if (key === 'title' || key === 'body' || key === 'link' || OVERRIDE.test(key)) {
      const error = checkTemplate(key, value);
      if (error) return error;
    }
  }
  return undefined;
}

/** Checks that a template names only known placeholders and closes every brace. */
export function checkTemplate(name, template) {
  for (const match of template.matchAll(/\{([^{}]*)(\}?)/g)) {
    if (!match[2]) return `${name}: unclosed '{' in ${JSON.stringify(template)}`;
    if (!PLACEHOLDERS.includes(match[1])) {
      return `${name}: unknown placeholder {${match[1]}}; use one of ` +
        PLACEHOLDERS.map((p) => `{${p}}`).join(', ');
    }
  }
  return undefined;
}

/** The length of `text` in UTF-8 bytes. */
export function utf8Length(text) {
  let bytes = 0;
  for (const ch of text) {
    const code = ch.codePointAt(0);
    bytes += code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
  }
  return bytes;
}

/** `text` cut to at most `max` UTF-8 bytes, on a character boundary, ending "…" when cut. */
export function clip(text, max) {
  if (utf8Length(text) <= max) return text;
  let out = '';
  let bytes = 3; // the "…"
  for (const ch of text) {
    bytes += utf8Length(ch);
    if (bytes > max) break;
    out += ch;
  }
  return `${out}…`;
}

/** Fills a template that checkTemplate accepted. */
export function render(template, fields) {
  return template.replace(/\{([a-z]+)\}/g, (whole, key) => fields[key] ?? whole);
}

/** A whole amount with thousands separators and, if set, its currency: "5,000 KRW". */
export function formatValue(value, currency) {
  const digits = BigInt(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return currency ? `${digits} ${currency}` : digits;
}

/** Milliseconds since the epoch as a date, "2026-12-31", or "never". */
export function formatExpiry(ms) {
  return ms === undefined ? 'never' : new Date(Number(ms)).toISOString().slice(0, 10);
}

/**
 * What to send for one issued coupon (its fields as the bindings give them) under the
 * settings (an object): {channel: 'push' | 'email' | 'none', to, title, body, data}.
 * A user with a device token gets a push; otherwise, with an email address and
 * email_fallback, an email; otherwise nothing.
 */
export function plan(coupon, settings) {
  const setting = (key) => settings[key] ?? DEFAULTS[key];
  const segment = coupon.ageGroup;
  const pick = (key) => (segment && settings[`${key}.${segment}`]) ?? setting(key);
  const fields = {
    campaign: coupon.campaignName,
    code: coupon.couponCode,
    value: formatValue(coupon.campaignValue, setting('currency')),
    user: coupon.userId,
    position: String(coupon.position),
    expires: formatExpiry(coupon.expiresAtMs),
  };
  const title = clip(render(pick('title'), fields), MAX_TITLE);
  const body = clip(render(pick('body'), fields), MAX_BODY);
  const link = clip(render(setting('link'), fields), MAX_LINK);
  if (coupon.fcmToken) {
    const data = [
      ['campaign_id', coupon.campaignId],
      ['coupon_code', coupon.couponCode],
    ];
    if (link) data.push(['link', link]);
    return { channel: 'push', to: coupon.fcmToken, title, body, data };
  }
  if (coupon.email && setting('email_fallback') === 'true') {
    return { channel: 'email', to: coupon.email, title, body: link ? `${body}\n\n${link}\n` : `${body}\n` };
  }
  return { channel: 'none' };
}
