// Types of the `msbvm` package (index.js over the native addon). Written by hand to match the
// addon's exports; test/unit.test.js checks that every export is declared here and nothing
// else is.

/// <reference types="node" />

/** A secret the guest sees only as a placeholder, swapped for `value` in requests to `hosts`. */
export interface SecretOptions {
  name: string;
  value: string;
  hosts?: string[];
  /** Substitute in headers (default true). */
  injectHeaders?: boolean;
  injectQuery?: boolean;
  injectBody?: boolean;
}

/** What a sandbox may create from inside (code there uses the Rust or Python peer API). */
export interface SpawnGrantOptions {
  children: number;
  cpus?: number;
  memory?: number;
  images?: string[];
  netAllow?: string[];
  depth?: number;
  secrets?: string[];
}

export interface CreateOptions {
  /** An OCI image reference (default: the embedded minimal image). */
  image?: string;
  cpus?: number;
  /** Memory in MiB. */
  memory?: number;
  env?: Record<string, string>;
  /** "HOST:GUEST[:ro]" or "NAME:GUEST[:ro]". */
  volumes?: string[];
  /** Give the guest a network at all (default true). */
  network?: boolean;
  netAllow?: string[];
  netDeny?: string[];
  netDefaultAllow?: boolean;
  workdir?: string;
  user?: string;
  /** Seconds to wait for the boot. */
  readyTimeout?: number;
  /** Keep running after this process exits. */
  detached?: boolean;
  secrets?: SecretOptions[];
  allowSpawn?: SpawnGrantOptions;
  /** "[ADDR:]HOST_PORT:GUEST_PORT". */
  publish?: string[];
  /** Aborting removes the sandbox and rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface ExecOptions {
  env?: Record<string, string>;
  cwd?: string;
  uid?: number;
  gid?: number;
  /** Run on a terminal of [rows, cols]. */
  tty?: [number, number];
  /** Seconds after which the process is killed (it then ends with timedOut). */
  timeout?: number;
  /** Aborting kills the process and rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface ForkOptions {
  count?: number;
  name?: string;
  env?: Record<string, string>;
  cpus?: number;
  memory?: number;
  detached?: boolean;
  readyTimeout?: number;
  netAllow?: string[];
  netDeny?: string[];
  netDefaultAllow?: boolean;
  secrets?: SecretOptions[];
}

export interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  /** As a shell reports it: the code, 128 + a signal, 124 for a timeout. */
  exitCode: number;
  signal?: number | null;
  timedOut: boolean;
}

export interface ExecEvent {
  kind: 'started' | 'stdout' | 'stderr' | 'exited';
  pid?: number | null;
  exitCode?: number | null;
  signal?: number | null;
  timedOut?: boolean | null;
  data?: Buffer | null;
}

export interface DirEntry {
  name: string;
  kind: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}

export interface SandboxInfo {
  name: string;
  status: string;
  pid: number;
  cpus: number;
  memoryMib: number;
  detached: boolean;
}

export interface SnapshotInfo {
  name: string;
  source: string;
  created: number;
  cpus: number;
  memoryMib: number;
}

export interface ImageInfo {
  reference: string;
  digest: string;
  size: number;
  layers: number;
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
  stop(timeout?: number): Promise<void>;
  kill(): Promise<void>;
  remove(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export declare function listSandboxes(): SandboxInfo[];
/** One step of a pull (see the Python package's PullEvent for the kinds). */
export interface PullEvent {
  kind: 'download_started' | 'download_progress' | 'download_finished' | 'unpack_started' | 'unpack_finished';
  id: string;
  done: number;
  total: number;
}

export declare function pull(
  reference: string,
  options?: { plainHttp?: string[]; onProgress?: (event: PullEvent) => void },
): Promise<ImageInfo>;

export interface ChildOptions {
  image?: string;
  cpus?: number;
  memory?: number;
  env?: Record<string, string>;
  netAllow?: string[];
  netDeny?: string[];
  network?: boolean;
  /** A grant of the child's own, in the CLI's --allow-spawn grammar. */
  allowSpawn?: string;
  secrets?: string[];
}

export interface PeerOutput {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
  truncated: boolean;
}

export interface PeerInfo {
  name: string;
  status: string;
  cpus: number;
  memoryMib: number;
  image: string;
}

/** Spawning from inside a sandbox (its creator gave it a SpawnGrantOptions). */
declare class Peers {
  static connect(): Promise<Peers>;
  create(name: string, options?: ChildOptions): Promise<void>;
  exec(name: string, command: string | string[], options?: { stdin?: string | Uint8Array }): Promise<PeerOutput>;
  read(name: string, path: string): Promise<Buffer>;
  write(name: string, path: string, data: string | Uint8Array): Promise<void>;
  list(): Promise<PeerInfo[]>;
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
