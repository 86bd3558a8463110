// An attested edgetrust module, as it runs inside its container (plain ESM JavaScript, Node 20, no build step).
// Steps, each logged as one JSON line on stdout:
//   key → csr → certificate (POST /v1/certificate on its own workload socket) → trust-bundle → connected (mTLS MQTT to
//   the edge hub) → telemetry every EDGETRUST_TELEMETRY_MS → renewing/renewed at EDGETRUST_RENEW_AT of the remaining
//   lifetime (fresh key each time) → reconnect with the new certificate.
// The private key is made here, in memory, and never leaves this process (the root filesystem is read-only anyway).
// EDGETRUST_ATTACK_MODULE=<other module>: once, publish to that module's telemetry topic (the hub must refuse it).
// EDGETRUST_ATTACK_SUBSCRIBE=<other module>: once, subscribe to that module's telemetry topic (the hub must refuse it).
// EDGETRUST_TELEMETRY_FIELDS={...}: JSON fields added to every telemetry message (e.g. personal data the hub redacts).
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import { request } from "node:http";
import * as x509 from "@peculiar/x509";
import mqtt from "mqtt";

const env = process.env;
const SOCKET = env.EDGETRUST_WORKLOAD_SOCKET ?? "/run/edgetrust/workload/workload.sock";
const HUB_HOST = env.EDGETRUST_HUB_HOST ?? "127.0.0.1";
const HUB_PORT = Number(env.EDGETRUST_HUB_PORT ?? "8883");
const HUB_NAME = env.EDGETRUST_HUB_NAME ?? "edgehub";
const TELEMETRY_MS = Number(env.EDGETRUST_TELEMETRY_MS ?? "1000");
const RENEW_AT = Number(env.EDGETRUST_RENEW_AT ?? "0.5");
const ATTACK = env.EDGETRUST_ATTACK_MODULE ?? "";
const ATTACK_SUBSCRIBE = env.EDGETRUST_ATTACK_SUBSCRIBE ?? "";
const FIELDS = env.EDGETRUST_TELEMETRY_FIELDS ? JSON.parse(env.EDGETRUST_TELEMETRY_FIELDS) : {};

const { subtle } = webcrypto;
x509.cryptoProvider.set(webcrypto);

function log(step, fields = {}) {
  process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), step, ...fields })}\n`);
}

/** One HTTP call on the workload socket; resolves {status, body}. */
function workload(method, path, body) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers = payload ? { "content-type": "application/json", "content-length": payload.length } : {};
    const req = request({ socketPath: SOCKET, method, path, headers, timeout: 10_000 }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = { detail: text };
        }
        resolve({ status: res.statusCode ?? 0, body: json });
      });
    });
    req.on("timeout", () => req.destroy(new Error("workload API timed out")));
    req.on("error", reject);
    req.end(payload);
  });
}

function pem(label, der) {
  const b64 = Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").trimEnd();
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** New key, CSR, certificate and trust bundle: everything the module needs to talk to the hub. */
async function obtainIdentity() {
  const alg = { name: "ECDSA", namedCurve: "P-256" };
  const keys = await subtle.generateKey(alg, true, ["sign", "verify"]);
  log("key", { alg: "ECDSA P-256" });
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=module", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
  log("csr");
  const issued = await workload("POST", "/v1/certificate", { csr: csr.toString("pem") });
  if (issued.status !== 200) throw new Error(`certificate refused (HTTP ${issued.status}): ${issued.body.detail ?? ""}`);
  const cert = new x509.X509Certificate(issued.body.certificate);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const uri = san?.names.items.find((n) => n.type === "url")?.value ?? "";
  const m = /^edgetrust:\/\/[^/]+\/devices\/([^/]+)\/modules\/([^/]+)$/.exec(uri);
  if (!m) throw new Error(`certificate names no module: ${uri}`);
  log("certificate", { uri, serial: cert.serialNumber, notAfter: cert.notAfter.toISOString(), pem: issued.body.certificate });
  const bundle = await workload("GET", "/v1/trust-bundle");
  if (bundle.status !== 200) throw new Error(`trust bundle refused (HTTP ${bundle.status})`);
  log("trust-bundle", { certificates: bundle.body.certificates.length });
  return {
    deviceId: m[1],
    moduleId: m[2],
    serial: cert.serialNumber,
    receivedAt: Date.now(),
    notAfter: cert.notAfter.getTime(),
    certChain: [issued.body.certificate, ...issued.body.chain].join("\n"),
    keyPem: pem("PRIVATE KEY", await subtle.exportKey("pkcs8", keys.privateKey)),
    ca: bundle.body.certificates,
  };
}

let identity;
let client;
let telemetry;
let renewTimer;
let retryTimer;
let failures = 0;
let seq = 0;
let attacked = false;
let subscribed = false;

function topicOf(module) {
  return `devices/${identity.deviceId}/modules/${module}/messages/events/`;
}

function connect() {
  const id = identity;
  const c = mqtt.connect(`mqtts://${HUB_HOST}:${HUB_PORT}`, {
    cert: id.certChain, key: id.keyPem, ca: id.ca, servername: HUB_NAME,
    protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, clientId: `${id.deviceId}/${id.moduleId}`,
  });
  client = c;
  c.on("connect", () => {
    failures = 0;
    log("connected", { hub: `${HUB_HOST}:${HUB_PORT}`, serial: id.serial });
    telemetry = setInterval(() => {
      seq += 1;
      c.publish(topicOf(id.moduleId), JSON.stringify({ ...FIELDS, module: id.moduleId, seq, serial: id.serial }), { qos: 1 });
      log("telemetry", { seq });
    }, TELEMETRY_MS);
    if (ATTACK && !attacked) {
      attacked = true;
      const topic = topicOf(ATTACK);
      c.publish(topic, JSON.stringify({ module: ATTACK, forgedBy: id.moduleId }), { qos: 1 });
      log("attack-publish", { topic });
    }
    if (ATTACK_SUBSCRIBE && !subscribed) {
      subscribed = true;
      const topic = `${topicOf(ATTACK_SUBSCRIBE)}#`;
      c.subscribe(topic, { qos: 1 }, (err, granted) => {
        // MQTT 3.1.1: a refused filter comes back as return code 0x80 (128) in the SUBACK.
        if (err) log("attack-subscribe", { topic, error: err.message });
        else log("attack-subscribe", { topic, granted: (granted ?? []).map((g) => g.qos) });
      });
    }
  });
  c.on("error", (e) => log("mqtt-error", { message: e.message }));
  c.on("close", () => {
    clearInterval(telemetry);
    if (client !== c) return; // replaced on purpose (renewal)
    log("disconnected");
    scheduleRetry();
  });
}

/** After a lost or refused connection: a fresh certificate first (the old one may be stale), then reconnect. */
function scheduleRetry() {
  clearTimeout(retryTimer);
  failures += 1;
  const delay = Math.min(10_000, 500 * 2 ** Math.min(failures, 5));
  retryTimer = setTimeout(async () => {
    try {
      await refresh("reconnect");
    } catch (e) {
      log("certificate-failed", { message: e.message });
      if (identity && Date.now() < identity.notAfter) connect(); // the hub decides whether the old one still counts
      else scheduleRetry();
    }
  }, delay);
}

/** Obtain a new identity and (re)connect with it. Throws when the workload API refuses. */
async function refresh(why) {
  log("renewing", { why });
  const next = await obtainIdentity();
  const previous = identity?.serial;
  identity = next;
  log("renewed", { why, serial: next.serial, previous });
  scheduleRenewal();
  const old = client;
  client = undefined;
  old?.end(true);
  connect();
}

function scheduleRenewal() {
  clearTimeout(renewTimer);
  const at = identity.receivedAt + RENEW_AT * (identity.notAfter - identity.receivedAt);
  log("renewal-scheduled", { at: new Date(at).toISOString() });
  renewTimer = setTimeout(() => {
    refresh("lifetime").catch((e) => {
      log("renew-failed", { message: e.message });
      renewTimer = setTimeout(scheduleRenewal, 2000);
    });
  }, Math.max(0, at - Date.now()));
}

process.on("SIGTERM", () => {
  log("stopping");
  client?.end(true);
  process.exit(0);
});

log("start", { node: process.versions.node, socket: SOCKET, hub: `${HUB_HOST}:${HUB_PORT}`, attack: ATTACK || undefined });
for (;;) {
  try {
    identity = await obtainIdentity();
    break;
  } catch (e) {
    log("certificate-failed", { message: e.message });
    await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** Math.min(++failures, 5))));
  }
}
failures = 0;
scheduleRenewal();
connect();
