/**
 * Durable writes (a pack, a journal append) run behind the caller, one at a time and in order, so that reading and
 * computing go on while the last write completes. A write's failure surfaces at the next push() or at settle().
 */
export class WriteBehind {
  private last: Promise<void> = Promise.resolve();

  /** Waits for the write before (rethrowing its failure), then starts `write` and returns. */
  async push(write: () => Promise<void>): Promise<void> {
    await this.last;
    this.last = write();
    this.last.catch(() => undefined); // surfaced by the next push() or settle()
  }

  /** Waits for the last write; rethrows its failure. */
  settle(): Promise<void> {
    return this.last;
  }

  /** Waits for the last write to end however it ends, so that none is left running behind a failure. */
  async drain(): Promise<void> {
    await this.last.catch(() => undefined);
  }
}
