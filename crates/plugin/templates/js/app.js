// {name}: a firstcome consumer plugin, in JavaScript.
//
// The component glue: it receives events from the host and acts through the capabilities of
// wit/plugin.wit (world `consumer`). componentize-js turns this module, and the modules it
// imports, into a component; the logic lives in logic.js, tested natively.
//
// Types as the bindings give them: records have camelCase fields, s64 is a BigInt, an absent
// option is undefined, a variant is {tag, val}.

import { log } from 'firstcome:plugin/log@0.1.0';
import { increment } from 'firstcome:plugin/kv@0.1.0';

import { counterKey, describe } from './logic.js';

function handle(event) {
  if (event.tag === 'coupon-issued') {
    const c = event.val;
    log('info', describe(c.userId, c.campaignName, c.position));
    // Needs `grants = ["kv", "stats"]` in the campaign file: kv for the counter, stats for
    // the age group (handed only to roles granted stats, email or push).
    increment(counterKey(c.ageGroup), 1n);
  }
}

/**
 * Any exception as the event's failure. A capability that refuses throws an error whose
 * `payload` is its delivery-error: `rejected` will never succeed (the dead letters at once),
 * `unavailable` is worth retrying. Anything else is retried with back-off, then dead-lettered,
 * with its message: an exception left to escape would trap, and its message would be lost.
 */
function failure(e) {
  if (e?.tag === 'permanent' || e?.tag === 'retryable') return { tag: e.tag, val: text(e.val) };
  const refused = e?.payload;
  if (refused?.tag === 'rejected') return { tag: 'permanent', val: `refused: ${text(refused.val)}` };
  if (refused?.tag === 'unavailable') return { tag: 'retryable', val: `unavailable: ${text(refused.val)}` };
  return { tag: 'retryable', val: text(`${name(e)}: ${text(e?.message ?? e)}`) };
}

/** Anything as at most 1,000 characters of text (a Symbol or a hostile object included). */
function text(value) {
  try {
    return String(value).slice(0, 1000);
  } catch {
    return 'an unprintable value';
  }
}

function name(e) {
  try {
    return typeof e?.name === 'string' ? e.name : 'Error';
  } catch {
    return 'Error';
  }
}

export const handler = {
  handle(event) {
    try {
      handle(event);
    } catch (e) {
      // Throw {tag: 'permanent', val: 'why'} to send the event straight to the dead letters.
      throw failure(e);
    }
  },
};
