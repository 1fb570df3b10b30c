// segment-push: a firstcome notification plugin in JavaScript.
//
// It tells each winner about their coupon: a push to their device, in a title and body
// templated per segment (the user's age group), with the coupon in the message's data, or an
// email when they have no device. Settings (all optional), see logic.js and README.md. Grants:
// push, email, kv.
//
// This is the component glue (world `consumer-with-init` of ../../../wit/plugin.wit); the
// logic is in logic.js, tested natively.

import { send as sendPush } from 'firstcome:plugin/push@0.1.0';
import { send as sendEmail } from 'firstcome:plugin/email@0.1.0';
import { increment } from 'firstcome:plugin/kv@0.1.0';
import { all } from 'firstcome:plugin/settings@0.1.0';

import { checkSettings, plan } from './logic.js';

/** A delivery error (an import's `err`, thrown by the bindings) as the event's failure. */
function failed(channel, e) {
  const error = e?.payload ?? e;
  if (error?.tag === 'rejected') return { tag: 'permanent', val: `${channel} refused: ${error.val}` };
  if (error?.tag === 'unavailable') return { tag: 'retryable', val: `${channel} unavailable: ${error.val}` };
  return { tag: 'retryable', val: `${e?.name ?? 'Error'}: ${e?.message ?? e}`.slice(0, 1000) };
}

function notify(coupon) {
  const p = plan(coupon, Object.fromEntries(all()));
  try {
    if (p.channel === 'push') sendPush(p.to, p.title, p.body, p.data);
    if (p.channel === 'email') sendEmail(p.to, p.title, p.body);
  } catch (e) {
    throw failed(p.channel, e);
  }
  // Applied only when the event is handled: a retried event is not counted twice.
  increment(`sent.${p.channel}`, 1n);
}

export const init = {
  init(settings) {
    const error = checkSettings(settings);
    if (error) throw error;
  },
};

export const handler = {
  handle(event) {
    try {
      if (event.tag === 'coupon-issued') notify(event.val);
    } catch (e) {
      if (e?.tag === 'permanent' || e?.tag === 'retryable') throw e;
      throw { tag: 'retryable', val: `${e?.name ?? 'Error'}: ${e?.message ?? e}`.slice(0, 1000) };
    }
  },
};
