import type { BundleOptions } from '@temporalio/worker';

/**
 * The domain modules the workflows import at run time. Every workflow evaluates the whole bundle's module graph again
 * unless a module is preloaded: these (and the libraries they import: zod, luxon, unhomoglyph) built their zod
 * schemas and unhomoglyph's confusables table anew for each workflow, about 55 ms of the workflow thread per
 * workflow, which made 50 concurrent creates take over 3 s to answer. They are pure (no state, no I/O, no time or
 * randomness at module scope), so one evaluation can be shared by every workflow of the worker.
 */
const PRELOADED_DOMAIN_MODULES = [
  'acceptance',
  'errors',
  'ids',
  'metering',
  'model',
  'policies',
  'requests',
  'rules',
  'search-attributes',
  'windows',
];

/** How the workflows are bundled, the same for the worker, the tests and the benchmark. */
export const WORKFLOW_BUNDLE_OPTIONS = {
  workflowsPath: require.resolve('../workflows'),
  preloadModules: PRELOADED_DOMAIN_MODULES.map((name) => require.resolve(`../domain/${name}`)),
} satisfies BundleOptions;
