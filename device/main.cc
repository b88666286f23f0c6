// edgesplit-device: runs one or several CNNs split between this device and an edgesplit server.
#include <iostream>
#include <string>

#include "device/config.h"
#include "device/runtime.h"

int main(int argc, char** argv) {
  auto command = edgesplit::device::parse_device_flags(argc, argv);
  if (!command.ok()) {
    std::cerr << "edgesplit-device: " << command.status().message()
              << " (see edgesplit-device --help)\n";
    return 2;
  }
  if (command->help) {
    std::cout << command->help_text << '\n';
    return 0;
  }
  return edgesplit::device::run_device(command->config);
}
