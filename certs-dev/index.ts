/** certs-dev/: the development PKI generator (never for production): `edgetrust certs-dev`, and tests' fixtures. */
export { createDevPki, DEV_ATTESTATION } from "./generate.js";
