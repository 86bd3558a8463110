import { EdgeTrustError } from "../../common/index.js";
import type { CaStore, CertificateRecord } from "../store.js";
import { FleetCounters } from "./counters.js";

async function existing(store: CaStore, serial: string, spkiSha256: string): Promise<CertificateRecord | undefined> {
  const rows = await store.db.query<{ serial: string }>(
    "SELECT serial FROM certificates WHERE replaces_serial = ? AND spki_sha256 = ? AND status = 'good' ORDER BY created_at DESC LIMIT 1", [serial, spkiSha256]);
  const s = rows[0]?.serial;
  return s ? store.getCertificate(s) : undefined;
}

/**
 * The good certificate that already replaces `serial` with the key `spkiSha256`, if any: what a renewal retried after
 * a lost answer (a CA process killed between commit and reply, a reset connection) must return instead of issuing a
 * second successor. A retry that arrives while the first attempt is still being issued (on any process) waits for
 * it: the first attempt claims (serial, key) in `fleet_counters` for a minute; later ones poll for its result and
 * answer CONFLICT (retry) if it never comes (its process died). Returns undefined when the caller should issue.
 */
export async function successorOf(store: CaStore, serial: string, spkiSha256: string): Promise<CertificateRecord | undefined> {
  const found = await existing(store, serial, spkiSha256);
  if (found) return found;
  const claim = await new FleetCounters(store.db).incr(`renew:${serial}:${spkiSha256}`, 60_000);
  if (claim.count === 1) return undefined;
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 200));
    const done = await existing(store, serial, spkiSha256);
    if (done) return done;
  }
  throw new EdgeTrustError("CONFLICT", `a renewal of certificate ${serial} with this key is in progress`, { hint: "retry shortly: its result is returned once issued" });
}

/** A renewal that failed gives its claim back, so a retry issues at once instead of waiting for the minute to pass. */
export async function releaseRenewal(store: CaStore, serial: string, spkiSha256: string): Promise<void> {
  await store.db.run("DELETE FROM fleet_counters WHERE key = ?", [`renew:${serial}:${spkiSha256}`]).catch(() => undefined);
}
