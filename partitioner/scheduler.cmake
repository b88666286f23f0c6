# The scheduler (cost model, constraints, hysteresis) and its estimators: a library of its own,
# free of LibTorch, so tests, benches and tools can use it without linking LibTorch. The
# partitioner re-exports it.
edgesplit_library(scheduler
  ${CMAKE_CURRENT_LIST_DIR}/scheduler.cc
  ${CMAKE_CURRENT_LIST_DIR}/estimators.cc
  ${CMAKE_CURRENT_LIST_DIR}/engine_names.cc
  ${CMAKE_CURRENT_LIST_DIR}/cut_table.cc
  ${CMAKE_CURRENT_LIST_DIR}/pressure.cc
  ${CMAKE_CURRENT_LIST_DIR}/exit_plans.cc
  ${CMAKE_CURRENT_LIST_DIR}/stage_placement.cc)
target_link_libraries(edgesplit_scheduler
  PUBLIC edgesplit::profiles
  PRIVATE nlohmann_json::nlohmann_json)
target_link_libraries(edgesplit_partitioner PUBLIC edgesplit::scheduler)
