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
    // Needs `grants = ["kv"]` in the campaign file.
    increment(counterKey(c.ageGroup), 1n);
  }
}

export const handler = {
  handle(event) {
    try {
      handle(event);
    } catch (e) {
      // Throw {tag: 'permanent', val: 'why'} to send the event straight to the dead letters.
      if (e?.tag === 'permanent' || e?.tag === 'retryable') throw e;
      // Anything else is retried with back-off, then dead-lettered, with its message: an
      // exception left to escape would trap, and its message would be lost.
      throw { tag: 'retryable', val: `${e?.name ?? 'Error'}: ${e?.message ?? e}`.slice(0, 1000) };
    }
  },
};
