import { test } from 'node:test';
import assert from 'node:assert/strict';

import { checkSettings, clip, formatExpiry, formatValue, plan, utf8Length } from './logic.js';

const coupon = {
  campaignId: 'weekend',
  campaignName: 'Weekend sale',
  campaignValue: 5000n,
  couponCode: 'AB12',
  userId: 'u1',
  position: 7n,
  ageGroup: '20s',
  fcmToken: 'device-1',
  email: 'u1@shop.test',
  expiresAtMs: 1798761599000n,
};

test('a user with a device gets a push in their segment', () => {
  const p = plan(coupon, { 'body.20s': '{user}, #{position}: {code} for {value}', currency: 'KRW',
    link: 'https://shop.test/c/{code}' });
  assert.equal(p.channel, 'push');
  assert.equal(p.title, 'A coupon for you: Weekend sale');
  assert.equal(p.body, 'u1, #7: AB12 for 5,000 KRW');
  assert.deepEqual(p.data, [['campaign_id', 'weekend'], ['coupon_code', 'AB12'],
    ['link', 'https://shop.test/c/AB12']]);
});

test('without a device, an email; without either, nothing', () => {
  const noDevice = { ...coupon, fcmToken: undefined, ageGroup: '30s' };
  const p = plan(noDevice, { 'body.20s': 'not this one' });
  assert.equal(p.channel, 'email');
  assert.equal(p.to, 'u1@shop.test');
  assert.equal(p.body, 'AB12 is yours: 5,000 off.\n');
  assert.equal(plan(noDevice, { email_fallback: 'false' }).channel, 'none');
  assert.equal(plan({ ...noDevice, email: undefined }, {}).channel, 'none');
});

test('values and dates', () => {
  assert.equal(formatValue(1234567n, ''), '1,234,567');
  assert.equal(formatValue(999n, 'EUR'), '999 EUR');
  assert.equal(formatExpiry(undefined), 'never');
  assert.equal(formatExpiry(0n), '1970-01-01');
});

test('bad settings are refused with what to fix', () => {
  assert.equal(checkSettings([['title', '{campaign}'], ['body.20s', '{code}']]), undefined);
  assert.match(checkSettings([['titel', 'x']]), /unknown setting "titel"/);
  assert.match(checkSettings([['body', 'hi {name}']]), /unknown placeholder \{name\}/);
  assert.match(checkSettings([['body', 'hi {code']]), /unclosed/);
  assert.match(checkSettings([['email_fallback', 'yes']]), /true or false/);
  assert.match(checkSettings([['currency', 'won']]), /ISO 4217/);
  assert.match(checkSettings([['title', '가'.repeat(334)]]), /at most 1000 bytes/);
  assert.match(checkSettings([['body.60s', 'x']]), /unknown segment "60s"/);
  assert.equal(checkSettings([['body.60_plus', 'x']]), undefined);
  assert.match(checkSettings([['currency', 'KR']]), /ISO 4217/);
});

test('long text is cut to the host limits, in bytes', () => {
  const long = '가'.repeat(333);
  const p = plan({ ...coupon, campaignName: long }, { title: '{campaign}', body: `${long}{campaign}` });
  assert.ok(utf8Length(p.title) <= 200 && p.title.endsWith('…'), p.title);
  assert.ok(utf8Length(p.body) <= 1500 && p.body.endsWith('…'));
  assert.equal(clip('abc', 3), 'abc');
  assert.equal(clip('abcd', 3), '…');
  assert.equal(utf8Length('a가😀'), 8);
});
