// OpenMeter's own JavaScript SDK (@openmeter/sdk) drives a customer flow against a running Metergate.
// Usage: node npm_openmeter_customer_flow.mjs <baseUrl>; prints one JSON object with what each step returned.
import { OpenMeter } from '@openmeter/sdk'

const baseUrl = process.argv[2]
const om = new OpenMeter({ baseUrl })
const out = {}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function waitForUsage(expected) {
  const deadline = Date.now() + 30000
  for (;;) {
    const value = await om.customers.entitlements.value('acme', 'gpt')
    if (value.usage === expected || Date.now() > deadline) return value
    await sleep(200)
  }
}

out.customer = await om.customers.create({
  name: 'ACME Inc.',
  key: 'acme',
  usageAttribution: { subjectKeys: ['acme-api', 'acme-batch'] },
})
out.meter = await om.meters.create({
  slug: 'tokens',
  eventType: 'tokens',
  aggregation: 'SUM',
  valueProperty: '$.tokens',
})
out.feature = await om.features.create({ key: 'gpt', name: 'GPT', meterSlug: 'tokens' })
out.entitlement = await om.customers.entitlements.create('acme', {
  type: 'metered',
  featureKey: 'gpt',
  usagePeriod: { interval: 'MONTH', anchor: new Date('2024-03-01T00:00:00Z') },
  measureUsageFrom: new Date('2024-03-01T00:00:00Z'),
  issueAfterReset: 1000,
})
await om.events.ingest([
  { id: 'npm-1', source: 'npm-sdk', type: 'tokens', subject: 'acme-api', time: new Date('2024-03-02T00:00:00Z'), data: { tokens: 100 } },
  { id: 'npm-2', source: 'npm-sdk', type: 'tokens', subject: 'acme-batch', time: new Date('2024-03-03T00:00:00Z'), data: { tokens: 50 } },
  { id: 'npm-3', source: 'npm-sdk', type: 'tokens', subject: 'not-acme', time: new Date('2024-03-03T00:00:00Z'), data: { tokens: 7 } },
])
out.valueAfterEvents = await waitForUsage(150)
out.access = await om.customers.getAccess('acme')
out.grant = await om.customers.entitlements.createGrant('acme', 'gpt', {
  amount: 500,
  effectiveAt: new Date('2024-03-01T00:00:00Z'),
  expiration: { duration: 'YEAR', count: 1 },
})
out.valueAfterGrant = await om.customers.entitlements.value('acme', 'gpt')
out.list = await om.customers.entitlements.list('acme')
await om.customers.entitlements.resetUsage('acme', 'gpt', { effectiveAt: new Date('2024-03-05T00:00:00Z') })
out.valueAfterReset = await om.customers.entitlements.value('acme', 'gpt')
out.customers = await om.customers.list({ subject: 'acme-batch' })
console.log(JSON.stringify(out))
