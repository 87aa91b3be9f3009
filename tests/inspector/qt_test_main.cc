// main() of the Qt inspector tests: a QApplication on the offscreen platform unless told otherwise.
#include <gtest/gtest.h>

#include <QApplication>
#include <QSettings>

int main(int argc, char** argv) {
  if (qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
  ::testing::InitGoogleTest(&argc, argv);
  QApplication app(argc, argv);
  QApplication::setOrganizationName("iopf-tests");
  QApplication::setApplicationName("iopf-inspector-tests");
  QSettings().clear();
  return RUN_ALL_TESTS();
}
