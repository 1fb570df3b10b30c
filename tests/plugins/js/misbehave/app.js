// A JavaScript plugin that misbehaves as its `mode` setting says, to test that the host's
// limits and error handling hold for components carrying an interpreter:
// exception, permanent, loop, alloc, flood; anything else handles the event.

import { log } from 'firstcome:plugin/log@0.1.0';
import { get } from 'firstcome:plugin/settings@0.1.0';
import { increment } from 'firstcome:plugin/kv@0.1.0';

function misbehave(mode) {
  switch (mode) {
    case 'exception':
      throw new TypeError('no profile for this user');
    case 'permanent':
      throw { tag: 'permanent', val: 'misbehave: refuses' };
    case 'loop':
      for (;;) {}
    case 'alloc': {
      const hoard = [];
      for (;;) hoard.push(new Array(1 << 16).fill(hoard.length));
    }
    case 'flood': {
      const line = 'x'.repeat(64 * 1024);
      for (;;) log('info', line);
    }
    default:
      increment('handled', 1n);
  }
}

export const handler = {
  handle(event) {
    try {
      misbehave(get('mode'));
    } catch (e) {
      if (e?.tag === 'permanent' || e?.tag === 'retryable') throw e;
      throw { tag: 'retryable', val: `${e?.name ?? 'Error'}: ${e?.message ?? e}`.slice(0, 1000) };
    }
  },
};
