# iopf_discover_tests(TARGET LABELS a b … [TIMEOUT S]): gtest_discover_tests with several labels.
# gtest_discover_tests(PROPERTIES LABELS "a;b") passes the list on as two words and keeps only "a",
# so the labels are set by a ctest include file that runs after the discovered tests are defined.
# Concurrency tests carry "core" so the TSan run (ctest -L core) covers them.
function(iopf_discover_tests target)
  cmake_parse_arguments(P "" "TIMEOUT" "LABELS" ${ARGN})
  gtest_discover_tests(${target} DISCOVERY_TIMEOUT 60 TEST_LIST ${target}_list)
  set(extra "")
  if(P_TIMEOUT)
    set(extra " TIMEOUT ${P_TIMEOUT}")
  endif()
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/${target}_labels.cmake
    "foreach(t IN LISTS ${target}_list)\n"
    "  set_tests_properties(\"\${t}\" PROPERTIES LABELS \"${P_LABELS}\"${extra})\n"
    "endforeach()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${CMAKE_CURRENT_BINARY_DIR}/${target}_labels.cmake)
endfunction()
