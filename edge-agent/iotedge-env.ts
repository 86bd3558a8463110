import { randomBytes } from "node:crypto";
import { WORKLOAD_MOUNT } from "./containers.js";

/**
 * The environment `ModuleClient.fromEnvironment()` of the Azure IoT SDKs reads, for modules the policy grants
 * `auth: sas`. The workload URI points at the module's own socket, mounted where it always is; the generation id is
 * new for every container the agent creates, so the SAS key the identity daemon makes for it (and every token signed
 * with that key) dies with the container's registration.
 */

/** The workload API version the Azure SDKs speak (azure-iot-device's WORKLOAD_API_VERSION). */
const IOTEDGE_WORKLOAD_API_VERSION = "2018-06-28";
const IOTEDGE_WORKLOAD_URI = `unix://${WORKLOAD_MOUNT}/workload.sock`;

export interface IotEdgeSettings {
  /** IOTEDGE_IOTHUBHOSTNAME: the host part of every SAS token's resource and of the MQTT user name. */
  iotHubHostName: string;
  /** IOTEDGE_GATEWAYHOSTNAME: where modules reach the hub (port 8883); a name on the hub's certificate. */
  gatewayHostName: string;
}

export const DEFAULT_IOTEDGE: IotEdgeSettings = { iotHubHostName: "edgetrust.local", gatewayHostName: "localhost" };

/** A module generation id: 16 lowercase hex characters (the identity daemon accepts `[a-z0-9]{8,32}`). */
export function newGenerationId(): string {
  return randomBytes(8).toString("hex");
}

export function iotEdgeEnvironment(o: IotEdgeSettings & { deviceId: string; module: string; generationId: string }): Record<string, string> {
  return {
    IOTEDGE_WORKLOADURI: IOTEDGE_WORKLOAD_URI,
    IOTEDGE_DEVICEID: o.deviceId,
    IOTEDGE_MODULEID: o.module,
    IOTEDGE_MODULEGENERATIONID: o.generationId,
    IOTEDGE_IOTHUBHOSTNAME: o.iotHubHostName,
    IOTEDGE_GATEWAYHOSTNAME: o.gatewayHostName,
    IOTEDGE_AUTHSCHEME: "sasToken",
    IOTEDGE_APIVERSION: IOTEDGE_WORKLOAD_API_VERSION,
  };
}
