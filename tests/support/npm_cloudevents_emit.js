// Prints, as JSON, what the npm `cloudevents` SDK emits for HTTP and Kafka in both modes (tests/support/npm_sdk.py runs it).
const { CloudEvent, HTTP, Kafka } = require("cloudevents");
const out = [];
const base = { type: "tokens", source: "npm-sdk", subject: "customer-1", time: "2026-11-30T12:00:00.000Z" };
const e1 = new CloudEvent({ ...base, id: "npm-http-structured", data: { tokens: 11 } });
const e2 = new CloudEvent({ ...base, id: "npm-http-binary", datacontenttype: "application/json", data: { tokens: 12 } });
const e3 = new CloudEvent({ ...base, id: "npm-kafka-structured", data: { tokens: 13 } });
const e4 = new CloudEvent({ ...base, id: "npm-kafka-binary", datacontenttype: "application/json", data: { tokens: 14 } });
out.push({ kind: "http", mode: "structured", message: HTTP.structured(e1) });
out.push({ kind: "http", mode: "binary", message: HTTP.binary(e2) });
out.push({ kind: "kafka", mode: "structured", message: Kafka.structured(e3) });
out.push({ kind: "kafka", mode: "binary", message: Kafka.binary(e4) });
console.log(JSON.stringify(out.map(o => ({ kind: o.kind, mode: o.mode, headers: o.message.headers,
  body: typeof o.message.body === "string" ? o.message.body : JSON.stringify(o.message.body),
  key: o.message.key || null }))));
