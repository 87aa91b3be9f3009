# Project-wide compile flags: warnings as errors, optional sanitizers.
add_compile_options(-Wall -Wextra -Werror -Wno-missing-field-initializers)

if(IOPF_SANITIZE STREQUAL "asan")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(IOPF_SANITIZE STREQUAL "tsan")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT IOPF_SANITIZE STREQUAL "")
  message(FATAL_ERROR "IOPF_SANITIZE must be '', 'asan' or 'tsan', not '${IOPF_SANITIZE}'")
endif()
