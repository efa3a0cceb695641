// `forkvmm-img img ...`: the `forkvmm img` commands in a binary of their own,
// so the image tests do not depend on the rest of the VMM building.
#include <CLI/CLI.hpp>

#include "tools/command.h"

int main(int argc, char** argv) {
  CLI::App app{"forkvmm-img: the 'forkvmm img' commands alone"};
  app.require_subcommand(1);
  forkvmm::cli::Command img = forkvmm::cli::AddImgCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return img.run();
}
