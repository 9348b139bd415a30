import path from 'node:path';
import { dirSize, run, timed } from './util';

/** A fresh restic repository in the work dir (default settings: restic 0.14+ compresses with zstd, "auto" level). */
export class ResticRepository {
  private readonly env: NodeJS.ProcessEnv;

  private constructor(
    private readonly restic: string,
    readonly dir: string,
  ) {
    this.env = {
      RESTIC_REPOSITORY: dir,
      // A throwaway repository: the password only has to be set.
      RESTIC_PASSWORD: 'bench',
      // Keep restic's local cache inside the work dir so the run leaves nothing behind.
      RESTIC_CACHE_DIR: path.join(path.dirname(dir), 'restic-cache'),
    };
  }

  static async init(restic: string, dir: string): Promise<ResticRepository> {
    const repository = new ResticRepository(restic, dir);
    await run(restic, ['init', '--quiet'], { env: repository.env });
    return repository;
  }

  /** `restic backup <file>`: seconds taken and how much the repository folder grew (apparent bytes). */
  async backup(file: string): Promise<{ seconds: number; growthBytes: number }> {
    const before = await this.sizeBytes();
    const { seconds } = await timed(() => run(this.restic, ['backup', '--quiet', file], { env: this.env }));
    return { seconds, growthBytes: (await this.sizeBytes()) - before };
  }

  async sizeBytes(): Promise<number> {
    return (await dirSize(this.dir)).apparent;
  }
}
