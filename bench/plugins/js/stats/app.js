// The stats plugin's counting (plugins/stats) in JavaScript, for the language benchmark: the
// same counters for the same events, so the harness can check it against the native logic.

import { increment, publish } from 'firstcome:plugin/stats@0.1.0';

/** A counter-name-safe label: lowercase a-z 0-9 - _, at most 32, "unknown" if empty. */
function label(value) {
  const cleaned = (value ?? '').trim().toLowerCase().replace(/[^a-z0-9_-]/g, '').slice(0, 32);
  return cleaned || 'unknown';
}

export const handler = {
  handle(event) {
    if (event.tag === 'coupon-issued') {
      const c = event.val;
      increment('issued', 1n);
      increment('revenue', c.campaignValue);
      increment(`gender.${label(c.gender)}`, 1n);
      increment(`age_group.${label(c.ageGroup)}`, 1n);
      publish();
    }
  },
};
