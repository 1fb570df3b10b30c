// The plugin's logic, in plain JavaScript: no host capability here, so that node's test
// runner tests it natively (logic.test.js). app.js connects it to the host.

/** What the plugin logs for an issued coupon. */
export function describe(userId, campaignName, position) {
  return `${userId} got coupon #${position} of ${campaignName}`;
}

/** The kv counter the plugin keeps per age group. */
export function counterKey(ageGroup) {
  return `issued.${ageGroup ?? 'unknown'}`;
}
