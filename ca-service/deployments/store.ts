import { randomUUID } from "node:crypto";
import { EdgeTrustError } from "../../common/index.js";
import { MANIFEST_LIMITS, decodePayload, nameGlobMatch, parseGeneralJws, validateManifest } from "../../policy/index.js";
import { sha256Hex, type CaStore } from "../store.js";

export interface DeploymentRecord {
  deploymentId: string;
  version: number;
  targets: string[];
  payloadSha256: string;
  jws: string;
  uploadedBy: string;
  uploadedAt: string;
}

interface Row {
  deployment_id: string;
  version: number | string;
  targets: string;
  payload_sha256: string;
  jws: string;
  uploaded_by: string;
  uploaded_at: string;
  [k: string]: unknown;
}

const toRecord = (r: Row): DeploymentRecord => ({
  deploymentId: r.deployment_id,
  version: Number(r.version),
  targets: JSON.parse(r.targets) as string[],
  payloadSha256: r.payload_sha256,
  jws: r.jws,
  uploadedBy: r.uploaded_by,
  uploadedAt: r.uploaded_at,
});

/**
 * Signed manifests as the security team uploaded them. The cloud checks the envelope and the payload's shape (so a
 * device is never served garbage) but never signs, and cannot: the signatures are verified only on the device.
 */
export class DeploymentStore {
  constructor(private readonly store: CaStore) {}

  async upload(jwsText: string, actor: string): Promise<{ record: DeploymentRecord; created: boolean }> {
    const jws = parseGeneralJws(jwsText, MANIFEST_LIMITS.maxSignatures);
    if (typeof jws === "string") throw new EdgeTrustError("INVALID_INPUT", `manifest: ${jws}`);
    let manifest;
    try {
      manifest = validateManifest(JSON.parse(new TextDecoder().decode(decodePayload(jws.payload, MANIFEST_LIMITS.maxPayloadBytes))) as unknown);
    } catch (e) {
      throw new EdgeTrustError("INVALID_INPUT", `manifest payload: ${(e as Error).message}`);
    }
    const payloadSha256 = sha256Hex(jws.payload);
    const db = this.store.db;
    return db.transaction(async (tx) => {
      const existing = (await tx.query<Row>("SELECT * FROM deployments WHERE deployment_id = ? AND version = ?", [manifest.deploymentId, manifest.version]))[0];
      if (existing) {
        // Same payload again (e.g. with one more signature) replaces the envelope; a different payload is a conflict.
        if (existing.payload_sha256 !== payloadSha256) {
          throw new EdgeTrustError("CONFLICT", `deployment ${manifest.deploymentId} version ${manifest.version} already exists with other content`, { hint: "publish a higher version" });
        }
        await tx.run("UPDATE deployments SET jws = ?, uploaded_by = ?, uploaded_at = ? WHERE deployment_id = ? AND version = ?", [JSON.stringify(jws), actor, new Date().toISOString(), manifest.deploymentId, manifest.version]);
      } else {
        await tx.run(
          "INSERT INTO deployments (deployment_id, version, targets, payload_sha256, jws, uploaded_by, uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
          [manifest.deploymentId, manifest.version, JSON.stringify(manifest.targets), payloadSha256, JSON.stringify(jws), actor, new Date().toISOString()],
        );
      }
      await this.store.appendAudit(tx, { actor, action: "deployment.upload", target: `${manifest.deploymentId}@${manifest.version}`, details: { targets: manifest.targets, signatures: jws.signatures.length, payloadSha256 } });
      const row = (await tx.query<Row>("SELECT * FROM deployments WHERE deployment_id = ? AND version = ?", [manifest.deploymentId, manifest.version]))[0];
      if (!row) throw new EdgeTrustError("INTERNAL", "deployment vanished inside its transaction");
      return { record: toRecord(row), created: !existing };
    });
  }

  /** The newest manifest (highest version, then latest upload) whose targets name this device. */
  async latestFor(deviceId: string): Promise<DeploymentRecord | undefined> {
    const rows = await this.store.db.query<Row>("SELECT * FROM deployments ORDER BY version DESC, uploaded_at DESC LIMIT 1000");
    return rows.map(toRecord).find((r) => r.targets.some((t) => nameGlobMatch(t, deviceId)));
  }

  async list(): Promise<DeploymentRecord[]> {
    return (await this.store.db.query<Row>("SELECT * FROM deployments ORDER BY deployment_id, version DESC")).map(toRecord);
  }

  /**
   * Store a report. With an idempotency key the id is derived from device and key, so a device retrying a report
   * whose answer it lost (a CA process killed mid-request) stores it once.
   */
  async addReport(deviceId: string, kind: string, body: unknown, idempotencyKey?: string): Promise<string> {
    const id = idempotencyKey ? `idem-${sha256Hex(`${deviceId}\n${idempotencyKey}`).slice(0, 32)}` : randomUUID();
    await this.store.db.run("INSERT INTO device_reports (id, device_id, kind, body, received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", [id, deviceId, kind, JSON.stringify(body), new Date().toISOString()]);
    return id;
  }

  async reports(deviceId: string, limit = 100): Promise<Array<{ id: string; kind: string; body: unknown; receivedAt: string }>> {
    const rows = await this.store.db.query<{ id: string; kind: string; body: string; received_at: string }>(
      "SELECT id, kind, body, received_at FROM device_reports WHERE device_id = ? ORDER BY received_at DESC LIMIT ?", [deviceId, limit]);
    return rows.map((r) => ({ id: r.id, kind: r.kind, body: JSON.parse(r.body) as unknown, receivedAt: r.received_at }));
  }
}
