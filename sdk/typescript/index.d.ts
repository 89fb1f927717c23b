// Types of the `msbvm` package (index.js over the native addon).
//
// The shapes of options and results are the addon's own, generated from its Rust source into
// native.d.ts by `napi build --dts` (scripts/build-typescript; scripts/test-typescript fails
// when the committed copy is stale). This file declares what index.js adds over the addon:
// the classes with async iterators, AbortSignal options and Symbol.asyncDispose, narrower
// string unions, and the error classes. test/unit.test.js checks that every export is
// declared here and nothing else is; test/types.ts is type-checked with tsc against it.

/// <reference types="node" />

import type * as native from './native';
import type { ExecResult, ImageInfo, SandboxInfo, SnapshotInfo } from './native';

export type {
  SecretOptions,
  SpawnGrantOptions,
  ExecResult,
  SandboxInfo,
  SnapshotInfo,
  ImageInfo,
  ChildOptions,
  PeerOutput,
  PeerInfo,
} from './native';

/** How to create a sandbox (see native.CreateOptions for each field). */
export interface CreateOptions extends native.CreateOptions {
  /** Aborting rejects with an AbortError and removes the sandbox as soon as it exists. */
  signal?: AbortSignal;
}

/** How to run a process (see native.ExecOptions). */
export interface ExecOptions extends Omit<native.ExecOptions, 'tty'> {
  /** Run on a terminal of [rows, cols]. */
  tty?: [number, number];
  /** Aborting kills the process and rejects with an AbortError. */
  signal?: AbortSignal;
}

/** How to start sandboxes from a snapshot (see native.ForkOptions). */
export interface ForkOptions extends Omit<native.ForkOptions, 'netRules'> {
  /** Allow rules replacing the source's (deny rules come first). */
  netAllow?: string[];
  /** Deny rules replacing the source's. */
  netDeny?: string[];
}

/** One thing that happened to a process. */
export interface ExecEvent extends native.ExecEvent {
  kind: 'started' | 'stdout' | 'stderr' | 'exited';
}

/** An entry of a guest directory, or what a guest path is. */
export interface DirEntry extends native.DirEntry {
  kind: 'file' | 'dir' | 'symlink' | 'other';
}

/** A guest event: its type, JSON data, and who sent it. */
export interface GuestEvent {
  type: string;
  data: unknown;
  id: string | null;
  reply_to: string | null;
  pid: number | null;
  exec: number | null;
  connection: number | null;
  time_ms: number | null;
}

export declare class ExecStream implements AsyncIterableIterator<ExecEvent> {
  readonly pid: number;
  next(): Promise<IteratorResult<ExecEvent>>;
  return(): Promise<IteratorResult<ExecEvent>>;
  [Symbol.asyncIterator](): AsyncIterableIterator<ExecEvent>;
  writeStdin(data: string | Uint8Array): Promise<void>;
  closeStdin(): Promise<void>;
  signal(signal: number): Promise<void>;
  resize(rows: number, cols: number): Promise<void>;
  close(): Promise<void>;
  wait(options?: { signal?: AbortSignal }): Promise<ExecResult>;
}

export declare class EventStream implements AsyncIterableIterator<GuestEvent> {
  next(): Promise<IteratorResult<GuestEvent>>;
  return(): Promise<IteratorResult<GuestEvent>>;
  [Symbol.asyncIterator](): AsyncIterableIterator<GuestEvent>;
  close(): Promise<void>;
}

/**
 * One network decision as the runtime recorded it: `event` says which ("flow_allowed",
 * "flow_denied", "flow_failed", "flow_closed", "dns_query", "http_request", ...), the other
 * fields what was decided (`dst`, `rule`, `reason`, `name`, `allowed`, ...).
 */
export interface NetworkEvent {
  event: string;
  [field: string]: unknown;
}

/** The network decisions a sandbox makes, read as they are recorded. */
export declare class NetEventStream {
  /** The events recorded since the last call, oldest first. */
  poll(): NetworkEvent[];
}

export declare class Sandbox {
  static create(name: string, options?: CreateOptions): Promise<Sandbox>;
  static get(name: string): Promise<Sandbox>;
  static removeNamed(name: string): Promise<void>;
  static fork(snapshot: string, options?: ForkOptions): Promise<Sandbox[]>;
  readonly name: string;
  readonly pid: number;
  exec(command: string | string[], options?: ExecOptions): Promise<ExecResult>;
  execStream(command: string | string[], options?: ExecOptions): Promise<ExecStream>;
  read(path: string): Promise<Buffer>;
  write(path: string, data: string | Uint8Array): Promise<void>;
  list(path: string): Promise<DirEntry[]>;
  stat(path: string): Promise<DirEntry>;
  mkdir(path: string, options?: { parents?: boolean }): Promise<void>;
  removePath(path: string, options?: { recursive?: boolean }): Promise<void>;
  copyIn(hostPath: string, guestPath: string): Promise<void>;
  copyOut(guestPath: string, hostPath: string): Promise<void>;
  setNetworkPolicy(policy: { defaultAllow: boolean; allow?: string[]; deny?: string[] }): Promise<void>;
  emit(kind: string, data?: unknown): Promise<void>;
  events(...types: string[]): Promise<EventStream>;
  snapshot(name: string): Promise<SnapshotInfo>;
  publish(port: string): Promise<string>;
  /** The network stack's counters (bytes, packets, flows, drops). */
  networkStats(): Promise<Record<string, unknown>>;
  /** The network decisions still on record (flows, DNS queries, HTTP requests), oldest first. */
  networkEvents(): NetworkEvent[];
  networkEventStream(): NetEventStream;
  /** Writes the guest's RAM to the new host file `path`; resolves to its size in bytes. */
  dumpMemory(path: string): Promise<number>;
  /** Sends an event with a fresh id and resolves to the guest's answer (AgentTimeoutError after `timeout` s, default 10). */
  request(kind: string, data?: unknown, options?: { timeout?: number }): Promise<GuestEvent>;
  /** Answers a guest event (as `events()` gave it). */
  reply(event: GuestEvent, kind: string, data?: unknown): Promise<void>;
  stop(timeout?: number): Promise<void>;
  kill(): Promise<void>;
  remove(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export declare function listSandboxes(): SandboxInfo[];
/** One step of a pull (see native.PullEvent for what `done` and `total` mean). */
export interface PullEvent extends native.PullEvent {
  kind: 'download_started' | 'download_progress' | 'download_finished' | 'unpack_started' | 'unpack_finished';
}

export declare function pull(
  reference: string,
  options?: { plainHttp?: string[]; onProgress?: (event: PullEvent) => void },
): Promise<ImageInfo>;

/** Spawning from inside a sandbox (its creator gave it a SpawnGrantOptions). */
declare class Peers {
  /** Connects to the host's spawn service; outside a sandbox it rejects with NotInSandboxError. */
  static connect(): Promise<Peers>;
  create(name: string, options?: native.ChildOptions): Promise<void>;
  exec(name: string, command: string | string[], options?: { stdin?: string | Uint8Array }): Promise<native.PeerOutput>;
  read(name: string, path: string): Promise<Buffer>;
  write(name: string, path: string, data: string | Uint8Array): Promise<void>;
  list(): Promise<native.PeerInfo[]>;
  emit(name: string, kind: string, data?: unknown): Promise<void>;
  stop(name: string): Promise<void>;
  remove(name: string): Promise<void>;
}

export declare const peer: { Peers: typeof Peers; inSandbox(): boolean };
export declare const version: string;
export declare const errorKinds: string[];

/** Base class of every msbvm error. */
export declare class MsbvmError extends Error {}
export declare class ImageError extends MsbvmError {}
export declare class InvalidNameError extends MsbvmError { sandbox: string }
export declare class NameInUseError extends MsbvmError { sandbox: string }
export declare class NotFoundError extends MsbvmError { sandbox: string }
export declare class SnapshotNotFoundError extends MsbvmError { sandbox: string }
export declare class NotRunningError extends MsbvmError { sandbox: string; status: string }
export declare class InvalidConfigError extends MsbvmError {}
export declare class NoKvmError extends MsbvmError {}
export declare class KernelError extends MsbvmError {}
export declare class AgentMissingError extends MsbvmError {}
export declare class BusyboxMissingError extends MsbvmError {}
export declare class RuntimeMissingError extends MsbvmError {}
export declare class GuestDiedError extends MsbvmError { consoleTail: string }
export declare class VmError extends MsbvmError {}
export declare class ProtocolMismatchError extends MsbvmError {}
export declare class ProtocolError extends MsbvmError {}
export declare class AgentError extends MsbvmError {}
export declare class DeniedError extends MsbvmError {}
export declare class GuestFileError extends MsbvmError {
  /** "not_found", "permission_denied", "already_exists", ... */
  kind: string;
}
export declare class AgentTimeoutError extends MsbvmError {}
export declare class LimitExceededError extends MsbvmError {}
export declare class ConnectionLostError extends MsbvmError {}
export declare class ReadyTimeoutError extends MsbvmError { consoleTail: string; whereItWas: string }
export declare class RuntimeFailedError extends MsbvmError { logTail: string }
export declare class HostIoError extends MsbvmError {}
export declare class CorruptStateError extends MsbvmError {}
export declare class NotInSandboxError extends MsbvmError {}
export declare class SpawnError extends MsbvmError {}
