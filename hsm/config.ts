import { Type, type Static } from "@sinclair/typebox";

/** `hsm:` section of edgetrust.yaml. */
export const HsmConfig = Type.Object(
  {
    backend: Type.Union([Type.Literal("pkcs11"), Type.Literal("software")], {
      default: "pkcs11",
      description: "pkcs11 (SoftHSM2, tpm2-pkcs11, a real HSM) or software (encrypted PKCS#8 files; development only)",
    }),
    module: Type.String({
      default: "/usr/lib/softhsm/libsofthsm2.so",
      description: "Path of the PKCS#11 module to load",
    }),
    tokenLabel: Type.String({ default: "edgetrust", description: "Label of the token that holds edgetrust's keys" }),
    pinFile: Type.String({
      default: "",
      description: "File whose first line is the user PIN (preferred); empty to use pinEnv",
    }),
    pinEnv: Type.String({
      default: "EDGETRUST_HSM_PIN",
      description: "Environment variable holding the user PIN when pinFile is empty",
    }),
    sessionPoolSize: Type.Integer({ minimum: 1, maximum: 64, default: 4, description: "Concurrent PKCS#11 sessions used for signing" }),
    softwareDir: Type.String({
      default: "/var/lib/edgetrust/keys",
      description: "Directory of the software key store (backend: software)",
    }),
    softwarePassphraseEnv: Type.String({
      default: "EDGETRUST_KEYSTORE_PASSPHRASE",
      description: "Environment variable holding the software key store passphrase",
    }),
    engine: Type.String({
      default: "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
      description: "OpenSSL engine used so TLS private keys stay in the token",
    }),
  },
  { additionalProperties: false, default: {}, description: "Key store (HSM)" },
);
export type HsmConfig = Static<typeof HsmConfig>;
