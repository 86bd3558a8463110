import type { CaStore, CertificateRecord } from "../store.js";

/**
 * The good certificate that already replaces `serial` with the key `spkiSha256`, if any: what a renewal retried after
 * a lost answer (a CA process killed between commit and reply, a reset connection) must return instead of issuing
 * a second successor. Uses the `certificates_replaces` index.
 */
export async function successorOf(store: CaStore, serial: string, spkiSha256: string): Promise<CertificateRecord | undefined> {
  const rows = await store.db.query<{ serial: string }>(
    "SELECT serial FROM certificates WHERE replaces_serial = ? AND spki_sha256 = ? AND status = 'good' ORDER BY created_at DESC LIMIT 1", [serial, spkiSha256]);
  const s = rows[0]?.serial;
  return s ? store.getCertificate(s) : undefined;
}
