// segment-push's logic, in plain JavaScript: what to send to whom. No host capability is
// used here, so node's test runner tests it natively (logic.test.js); app.js sends.

/** The placeholders a template may name. */
export const PLACEHOLDERS = ['campaign', 'code', 'value', 'user', 'position', 'expires'];

/** The settings a campaign file may give, with their defaults. */
export const DEFAULTS = {
  title: 'A coupon for you: {campaign}',
  body: '{code} is yours: {value} off. It expires {expires}.',
  link: '',
  currency: '',
  email_fallback: 'true',
};

/** A template's segment-specific override is `title.<segment>` or `body.<segment>`. */
const OVERRIDE = /^(title|body)\.([a-z0-9_-]{1,32})$/;

/** At most this many characters in a setting, or a rendered title or body. */
export const MAX_TEXT = 1000;

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
    if (value.length > MAX_TEXT) return `${key}: at most ${MAX_TEXT} characters`;
    if (key === 'email_fallback' && value !== 'true' && value !== 'false') {
      return `email_fallback must be true or false, not ${JSON.stringify(value)}`;
    }
    if (key === 'currency' && !/^[A-Z]{0,3}$/.test(value)) {
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
  const title = render(pick('title'), fields).slice(0, MAX_TEXT);
  const body = render(pick('body'), fields).slice(0, MAX_TEXT);
  const link = render(setting('link'), fields);
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
