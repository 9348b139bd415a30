import { SingleBar } from 'cli-progress';
import { formatBytes } from './format';

export interface ProgressReading {
  stage: string;
  bytesDone: number;
  bytesTotal: number;
  throughput: number;
  etaSeconds: number | null;
}

/**
 * A terminal progress bar that follows stages: one bar per stage (validation, capture, …) with bytes, throughput
 * and ETA. Without a TTY it prints one line per stage instead.
 */
export function stageProgressBar(stream: NodeJS.WriteStream = process.stderr) {
  const bar = new SingleBar({
    stream,
    format: '{stage} [{bar}] {percentage}% | {done} / {total} | {speed}/s | ETA {eta_s}',
    barCompleteChar: '█',
    barIncompleteChar: '░',
    hideCursor: true,
    clearOnComplete: false,
  });
  let stage: string | null = null;
  return {
    update(reading: ProgressReading): void {
      const payload = {
        stage: reading.stage.padEnd(11),
        done: formatBytes(reading.bytesDone),
        total: formatBytes(reading.bytesTotal),
        speed: formatBytes(reading.throughput),
        eta_s: reading.etaSeconds === null ? '-' : `${reading.etaSeconds}s`,
      };
      if (reading.stage !== stage) {
        if (stage !== null && stream.isTTY) bar.stop();
        stage = reading.stage;
        if (stream.isTTY) bar.start(Math.max(reading.bytesTotal, 1), reading.bytesDone, payload);
        else stream.write(`${reading.stage}...\n`);
        return;
      }
      if (!stream.isTTY) return;
      bar.setTotal(Math.max(reading.bytesTotal, 1));
      bar.update(reading.bytesDone, payload);
    },
    stop(): void {
      if (stage !== null && stream.isTTY) bar.stop();
    },
  };
}
