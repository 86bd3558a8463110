import { EventEmitter } from "node:events";
import { readFileSync, existsSync } from "node:fs";
import { Type, type Static } from "@sinclair/typebox";
import { writeFileAtomic, validateValue } from "../common/index.js";
import { ModuleNamePattern } from "../policy/index.js";

/** What the agent vouches for when it registers a module: the container it created from a verified manifest. */
export const AttestedModuleSchema = Type.Object(
  {
    name: Type.String({ pattern: ModuleNamePattern, description: "module name from the manifest" }),
    containerId: Type.String({ pattern: "^[0-9a-f]{64}$", description: "Docker container ID" }),
    imageRepository: Type.String({ minLength: 1, maxLength: 255, pattern: "^[a-z0-9][a-z0-9._:/-]*$" }),
    imageDigest: Type.String({ pattern: "^sha256:[0-9a-f]{64}$" }),
    manifestVersion: Type.Integer({ minimum: 1 }),
    deploymentId: Type.String({ minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9._-]+$" }),
    uid: Type.Integer({ minimum: 0, maximum: 4294967294, description: "uid the module runs as (owns its socket)" }),
    gid: Type.Integer({ minimum: 0, maximum: 4294967294 }),
    auth: Type.Optional(Type.Union([Type.Literal("x509"), Type.Literal("sas")], { description: "how the module authenticates to the hub (policy grant); default x509" })),
    generationId: Type.Optional(Type.String({ pattern: "^[a-z0-9]{8,32}$", description: "IOTEDGE_MODULEGENERATIONID the agent gave this container (required with auth: sas)" })),
  },
  { additionalProperties: false },
);
export type AttestedModuleInput = Static<typeof AttestedModuleSchema>;
export interface AttestedModule extends AttestedModuleInput {
  registeredAt: string;
}

const StateSchema = Type.Object({ modules: Type.Array(Type.Unknown()) });
/** A stored registration: the input plus when it was made (an Intersect would trip over additionalProperties: false). */
const StoredModuleSchema = Type.Object({ ...AttestedModuleSchema.properties, registeredAt: Type.String() }, { additionalProperties: false });

export interface AttestedModulesEvents {
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
      const state = validateValue(JSON.parse(readFileSync(file, "utf8")), StateSchema, file);
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
