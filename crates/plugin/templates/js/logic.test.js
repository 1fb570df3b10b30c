import { test } from 'node:test';
import assert from 'node:assert/strict';

import { counterKey, describe } from './logic.js';

test('describes an issuance', () => {
  assert.equal(describe('u1', 'Spring', 3n), 'u1 got coupon #3 of Spring');
  assert.equal(counterKey(undefined), 'issued.unknown');
  assert.equal(counterKey('20s'), 'issued.20s');
});
