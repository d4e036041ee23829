"""The always-on service: lifecycle and sd_notify, workers, the watcher and its completeness rule,
the writer scan, metrics, the status page and the background scrub."""
