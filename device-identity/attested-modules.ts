import { EventEmitter } from "node:events";
import { readFileSync, existsSync } from "node:fs";
import { registerCompiledValidator, writeFileAtomic, validateValue } from "../common/index.js";
import type { AttestedModuleInput } from "../identity-api/index.js";
import { AttestedModulesFileSchema, StoredModuleSchema } from "./state-schema.js";
import { attestedModulesFileValidator, storedModuleValidator } from "./state-validator.js";

export type { AttestedModuleInput };

export interface AttestedModule extends AttestedModuleInput {
  registeredAt: string;
}

// A daemon restarted with modules registered reads this file at start: compiling these two schemas there loaded ajv
// and its meta-schema into the daemon (issue 14), so they are compiled at build time like the identity state's.
registerCompiledValidator(AttestedModulesFileSchema, attestedModulesFileValidator);
registerCompiledValidator(StoredModuleSchema, storedModuleValidator);

interface AttestedModulesEvents {
  registered: [AttestedModule];
  deregistered: [AttestedModule, string];
}

/**
 * The set of modules the agent has attested, persisted atomically so a daemon restart keeps them. Deregistration is
 * an event: the workload socket closes and the hub disconnects the module.
 */
export class AttestedModules extends EventEmitter<AttestedModulesEvents> {
  private readonly modules = new Map<string, AttestedModule>();

  constructor(private readonly file: string) {
    super();
    if (existsSync(file)) {
      const state = validateValue(JSON.parse(readFileSync(file, "utf8")), AttestedModulesFileSchema, file);
      for (const m of state.modules) {
        const v = validateValue(m, StoredModuleSchema, file);
        this.modules.set(v.name, v);
      }
    }
  }

  get(name: string): AttestedModule | undefined {
    return this.modules.get(name);
  }

  list(): AttestedModule[] {
    return [...this.modules.values()];
  }

  register(input: AttestedModuleInput): AttestedModule {
    const m: AttestedModule = { ...input, registeredAt: new Date().toISOString() };
    const prev = this.modules.get(m.name);
    this.modules.set(m.name, m);
    this.persist();
    if (prev && (prev.containerId !== m.containerId || prev.imageDigest !== m.imageDigest)) this.emit("deregistered", prev, "replaced");
    this.emit("registered", m);
    return m;
  }

  deregister(name: string, reason: string): AttestedModule | undefined {
    const m = this.modules.get(name);
    if (!m) return undefined;
    this.modules.delete(name);
    this.persist();
    this.emit("deregistered", m, reason);
    return m;
  }

  private persist(): void {
    writeFileAtomic(this.file, JSON.stringify({ modules: this.list() }, null, 2));
  }
}
