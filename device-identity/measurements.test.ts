import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { runningCodeFile } from "./daemon.js";

// The agent measurement must cover the code that runs: from a bundle, `process.argv[1]` is only bin/edgetrust.js,
// a launcher that would hash the same whatever the bundle holds.
describe("the agent measurement's default file", () => {
  it("is the daemon's bundle when the daemon runs from one, not the launcher", () => {
    const bundle = pathToFileURL("/opt/edgetrust/dist/daemons/device.mjs").href;
    expect(runningCodeFile(bundle, "/opt/edgetrust/bin/edgetrust.js")).toBe("/opt/edgetrust/dist/daemons/device.mjs");
  });
  it("is the entry script when the daemon runs from the module tree", () => {
    const tree = pathToFileURL("/opt/edgetrust/dist/device-identity/daemon.js").href;
    expect(runningCodeFile(tree, "/opt/edgetrust/bin/edgetrust.js")).toBe("/opt/edgetrust/bin/edgetrust.js");
    expect(runningCodeFile(tree, undefined)).toBe("");
  });
});
