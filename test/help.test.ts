import { describe, expect, it } from "vitest";
import { CommanderError, type Command } from "commander";
import { buildProgram, main } from "../cli/index.js";

/**
 * `--help` of every command and subcommand, byte for byte, against `test/golden/help.txt`: a refactoring of a CLI
 * (issue 14: one function per subcommand) must not change what a user reads. Run in-process through `main()`, the
 * function `bin/edgetrust.js` calls, with stdout captured. A deliberate change of help text: `vitest run -u` this file
 * and review the golden diff.
 */
function paths(cmd: Command, prefix: string[] = []): string[][] {
  const out: string[][] = [];
  for (const c of cmd.commands) {
    if (c.name() === "help") continue;
    const p = [...prefix, c.name()];
    out.push(p, ...paths(c, p));
  }
  return out;
}

async function helpOf(path: string[]): Promise<string> {
  let text = "";
  let exited: number | undefined;
  const write = process.stdout.write.bind(process.stdout);
  const exit = process.exit.bind(process);
  // A nested subcommand's --help ends in process.exit(0) (only the first level has exitOverride): stop it here.
  process.exit = ((c?: number): never => {
    exited = c ?? 0;
    throw new CommanderError(exited, "commander.helpDisplayed", "(exit)");
  }) as typeof process.exit;
  process.stdout.write = ((chunk: string | Uint8Array): boolean => {
    text += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString();
    return true;
  }) as typeof process.stdout.write;
  try {
    const code = await main(["node", "edgetrust", ...path, "--help"]);
    expect(code, path.join(" ")).toBe(0);
    expect(exited ?? 0, path.join(" ")).toBe(0);
  } finally {
    process.stdout.write = write;
    process.exit = exit;
  }
  return text;
}

describe("--help of every command", () => {
  it("matches test/golden/help.txt", async () => {
    const all = paths(await buildProgram());
    expect(all.length).toBeGreaterThan(50);
    let doc = `$ edgetrust --help\n${await helpOf([])}`;
    for (const p of all) doc += `\n$ edgetrust ${p.join(" ")} --help\n${await helpOf(p)}`;
    await expect(doc).toMatchFileSnapshot("golden/help.txt");
  }, 60_000);
});
