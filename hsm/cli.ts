import { Command } from "commander";

export function hsmCommand(): Command {
  return new Command("hsm").description("Key store: PKCS#11 tokens (SoftHSM2, TPM, HSM) and the development software store");
}
