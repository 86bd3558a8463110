import "reflect-metadata";
import { AsnConvert } from "@peculiar/asn1-schema";
import { CRLNumber, id_ce_cRLNumber } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { keyStoreCrypto, keyStoreCryptoKey, type KeyStore } from "../hsm/index.js";
import { signingAlgorithmFor, wholeSeconds } from "../pki/index.js";
import type { CaRecord, CaStore } from "./store.js";

/** Default validity of the root's CRL: the root key is offline, so it is re-signed at each ceremony (init, rollover). */
const ROOT_CRL_VALIDITY_DAYS = 365;

/** `<base>/v1/crl/<caId>.crl` — where a CA's CRL is published (CRL distribution point). */
export function crlUrlOf(publicBaseUrl: string, caId: string): string {
  return `${publicBaseUrl.replace(/\/$/, "")}/v1/crl/${caId}.crl`;
}

/**
 * Sign and store the next CRL of the root with the root key (the offline key: `ca init` and `ca rollover` are the
 * ceremonies that use it). It lists the root's issuing CAs that were revoked — none today: an issuing CA is retired,
 * not revoked. Relying parties that check the whole chain (`openssl verify -crl_check_all`) need it.
 */
export async function signRootCrl(store: CaStore, keys: KeyStore, root: CaRecord, validityDays = ROOT_CRL_VALIDITY_DAYS): Promise<{ crlNumber: number; der: Buffer }> {
  const crypto = keyStoreCrypto();
  const cert = new x509.X509Certificate(root.certPem);
  const key = await keyStoreCryptoKey(keys, { label: root.keyLabel });
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  return store.nextCrl(root.id, async (crlNumber) => {
    const thisUpdate = wholeSeconds(Date.now());
    let nextUpdate = wholeSeconds(thisUpdate.getTime() + validityDays * 86400e3);
    if (nextUpdate > cert.notAfter) nextUpdate = wholeSeconds(cert.notAfter);
    const crl = await x509.X509CrlGenerator.create({
      issuer: cert.subjectName,
      thisUpdate,
      nextUpdate,
      entries: [],
      extensions: [
        new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(crlNumber))),
        ...(ski ? [new x509.AuthorityKeyIdentifierExtension(ski, false)] : []),
      ],
      signingKey: key,
      signingAlgorithm: signingAlgorithmFor(key),
    }, crypto);
    return { der: new Uint8Array(crl.rawData), thisUpdate, nextUpdate };
  });
}
