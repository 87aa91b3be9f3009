// iopfd — the IOPF router daemon.
//
//   iopfd --config FILE [--listen ADDR]...   run with a config file (YAML or JSON)
//   iopfd --demo [--listen ADDR]...          run the embedded demo (simulated backend, shipped scenario)
//   iopfd --check-config FILE                validate a config file and exit (0 valid, 1 invalid)
//
// ADDR is unix:PATH (default unix:/run/iopf/iopfd.sock, mode 0660, directory 0750) or HOST:PORT
// (TLS required). SIGHUP reloads the config; SIGTERM / SIGINT drain and exit 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "daemon.h"
#include "demo_config.h"

namespace {

int usage(FILE* out, int rc) {
  std::fprintf(out,
               "usage: iopfd --config FILE [--listen ADDR]...\n"
               "       iopfd --demo [--listen ADDR]...\n"
               "       iopfd --check-config FILE\n"
               "ADDR: unix:PATH (default %s) or HOST:PORT (needs TLS in the config)\n",
               iopf::api::kDefaultSocket);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  iopf::daemon::DaemonOptions options;
  std::string check;
  bool demo = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "iopfd: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--config") {
      options.config_path = value();
    } else if (a == "--listen") {
      options.listen.push_back(value());
    } else if (a == "--check-config") {
      check = value();
    } else if (a == "--demo") {
      demo = true;
    } else if (a == "-h" || a == "--help") {
      return usage(stdout, 0);
    } else {
      std::fprintf(stderr, "iopfd: unknown argument '%s'\n", a.c_str());
      return usage(stderr, 2);
    }
  }

  // Signals are taken synchronously by the main thread: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  iopf::daemon::Daemon daemon;
  if (!check.empty()) {
    auto cfg = iopf::daemon::loadConfig(check);
    if (!cfg.ok()) {
      std::fprintf(stderr, "%s\n", std::string(cfg.status().message()).c_str());
      return 1;
    }
    std::printf("%s: valid\n", check.c_str());
    return 0;
  }
  std::optional<iopf::daemon::LoadedConfig> preloaded;
  if (demo) {
    auto cfg = iopf::daemon::demoConfig();
    if (!cfg.ok()) {
      std::fprintf(stderr, "iopfd --demo: %s\n", std::string(cfg.status().message()).c_str());
      return 1;
    }
    preloaded = std::move(*cfg);
  } else if (options.config_path.empty()) {
    return usage(stderr, 2);
  }
  if (absl::Status st = daemon.start(options, std::move(preloaded)); !st.ok()) {
    std::fprintf(stderr, "iopfd: %s\n", std::string(st.message()).c_str());
    daemon.drain();
    return 1;
  }
  std::fprintf(stderr, "iopfd %s: serving on %s\n", iopf::daemon::kVersion,
               options.listen.empty() ? "the configured address" : options.listen.front().c_str());
  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      auto gen = daemon.reloadConfig();
      if (gen.ok()) {
        std::fprintf(stderr, "iopfd: config reloaded (generation %llu)\n", static_cast<unsigned long long>(*gen));
      } else {
        std::fprintf(stderr, "iopfd: reload refused, the old config stays: %s\n",
                     std::string(gen.status().message()).c_str());
      }
      continue;
    }
    std::fprintf(stderr, "iopfd: %s: draining\n", strsignal(sig));
    daemon.drain();
    const auto stats = daemon.router().stats();
    std::fprintf(stderr, "iopfd: drained: %llu groups answered INVALID at shutdown, %llu answered in all, %llu open\n",
                 static_cast<unsigned long long>(stats.responses_by_origin[static_cast<size_t>(iopf::Origin::kShutdown)]),
                 static_cast<unsigned long long>(stats.responses), static_cast<unsigned long long>(stats.open_groups));
    return 0;
  }
}
